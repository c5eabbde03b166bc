"""Loss and accuracy curves of a training run as a PNG (vitx.imaging, no plotting dependency)."""
import numpy as np

from vitx.imaging import line_chart, save_png


def draw_curves(history, path):
    loss = line_chart("train loss", {"loss": ([h["train_loss"] for h in history], (200, 60, 40))}, size=(260, 320))
    accuracy = line_chart("test accuracy", {"accuracy": ([h["test_accuracy"] for h in history], (40, 120, 220))},
                          size=(260, 320))
    save_png(path, np.concatenate([loss, accuracy], axis=1))
