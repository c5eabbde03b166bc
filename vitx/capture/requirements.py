"""What a method can ask the core to record (`Explainer.requires`): the capture layer's own
vocabulary, so the recorder and the adapters read it without importing the explainers."""
ATTENTION = "attention"  # post-softmax attention per layer (B, heads, N, N)
ATTENTION_GRAD = "attention_grad"  # d(target score)/d(attention) per layer
TOKENS = "tokens"  # token states after each block (B, N, D)
TOKEN_GRAD = "token_grad"  # d(target score)/d(token states) per block
MODEL = "model"  # nothing recorded: the method runs the model itself (evidence.score / input_gradient)
BLOCK_STATES = "block_states"  # per block: its input, the residual stream after attention, its output
REQUIREMENTS = (ATTENTION, ATTENTION_GRAD, TOKENS, TOKEN_GRAD, MODEL, BLOCK_STATES)
