"""Loss and accuracy curves of a training run as a PNG (drawn by vitx.figures)."""
from vitx.inspect.figures import training_curves
from vitx.imaging import save_png


def draw_curves(history, path):
    save_png(path, training_curves(history))
