"""Integrated gradients (Sundararajan, Taly & Yan, ICML 2017) and input x gradient.

IG_i = (x_i - x'_i) * integral_0^1 d f(x' + a (x - x')) / d x_i da, the integral by a
quadrature rule over `steps` points on the straight path from the baseline x' to x (the
rules and their names are captum's: Gauss-Legendre, or Riemann left / right / middle /
trapezoid; captum's trapezoid weighs n points by 1/n, summing to (n - 1)/n, vitx's by
1/(n - 1) as the trapezoid rule does, so vitx's is captum's times n/(n - 1)). Completeness: the attributions sum to f(x) - f(x') up to the quadrature error.
Pixel attributions are summed per patch (channels and pixels), so a token's relevance is
its share of f(x) - f(x'). The steps are stacked on the batch, `internal_batch_size` at a time.
"""
import numpy as np
import torch

from vitx.plugin import GRAD_MODE_OPTION, MAX_PER_PASS, MODEL, Explainer, Option, VitxError, baseline_option, hookimpl


RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def path_points(rule: str, steps: int):
    """(alphas, weights): points in [0, 1] and their quadrature weights (summing to 1)."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise VitxError("integrated_gradients: the trapezoid rule needs at least 2 steps")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] *= 0.5
        return np.linspace(0, 1, steps), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)


class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    summary = "(x - baseline) * path-averaged input gradient, summed per patch (completeness: sums to f(x) - f(baseline))"
    paper = "Sundararajan, Taly & Yan 2017, 'Axiomatic Attribution for Deep Networks'"
    requires = (MODEL,)
    options = (
        Option("steps", int, 32, "points on the path from the baseline to the image", minimum=1, maximum=4096),
        baseline_option("here where the path starts"),
        Option("rule", str, "gausslegendre", "quadrature rule along the path (captum's names)", RULES),
        Option("internal_batch_size", int, 16, "path points stacked into one forward/backward pass", minimum=1,
               maximum=MAX_PER_PASS, aliases=("steps_per_pass",)),
        GRAD_MODE_OPTION,
    )

    def explain(self, evidence):
        pixels = evidence.pixels
        start = evidence.baseline(self.baseline)
        alphas, weights = path_points(self.rule, self.steps)
        total = torch.zeros_like(pixels)
        for first in range(0, self.steps, self.internal_batch_size):
            chunk = slice(first, min(first + self.internal_batch_size, self.steps))
            path = torch.cat([start + float(a) * (pixels - start) for a in alphas[chunk]])
            _, grad = evidence.input_gradient(path)
            step_weights = torch.tensor(weights[chunk], dtype=grad.dtype, device=grad.device)
            total += (step_weights.view(-1, 1, 1, 1, 1) * grad.view(-1, *pixels.shape)).sum(0)
        return evidence.pixels_to_tokens((pixels - start) * total)


class InputXGradient(Explainer):
    name = "input_x_gradient"
    summary = "input * d(score)/d(input), summed per patch (one backward pass)"
    paper = "Shrikumar et al. 2016, 'Not Just a Black Box: Learning Important Features Through Propagating Activation Differences'"
    requires = (MODEL,)
    options = (GRAD_MODE_OPTION,)

    def explain(self, evidence):
        _, grad = evidence.input_gradient(evidence.pixels)
        return evidence.pixels_to_tokens(evidence.pixels * grad)


@hookimpl
def vitx_register_explainers(register):
    register(IntegratedGradients)
    register(InputXGradient)
