"""From-scratch ViT / DeiT students, a CNN teacher, data, a trainer and the study
(installed as `vitx.reference_models`). The `plugin` module makes them explainable and
loadable by name or path through vitx's plugin hooks."""
