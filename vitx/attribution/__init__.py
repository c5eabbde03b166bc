"""From a model and images to an Explanation: the explainer base, the `explain` driver, shared math.

(Named `attribution` rather than `explain` so that `vitx.explain` stays the function.)
"""
