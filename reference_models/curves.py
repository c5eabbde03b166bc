"""Loss and accuracy curves as a PNG, drawn with OpenCV (no plotting dependency)."""
import cv2
import numpy as np


def draw_curves(history, path, width=640, height=300):
    canvas = np.full((height, width, 3), 255, np.uint8)
    epochs = [h["epoch"] for h in history]
    series = [("train loss", [h["train_loss"] for h in history], (200, 60, 40)),
              ("test accuracy", [h["test_accuracy"] for h in history], (40, 120, 220))]
    left, right, top, bottom = 50, width - 20, 30, height - 40
    cv2.rectangle(canvas, (left, top), (right, bottom), (180, 180, 180), 1)
    for i, (name, values, color) in enumerate(series):
        low, high = min(values), max(values)
        span = high - low or 1.0
        xs = [left + (right - left) * (e - epochs[0]) / max(epochs[-1] - epochs[0], 1) for e in epochs]
        ys = [bottom - (bottom - top) * (v - low) / span for v in values]
        points = np.array([[int(x), int(y)] for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(canvas, [points], False, color, 2)
        for p in points:
            cv2.circle(canvas, tuple(int(c) for c in p), 3, color, -1)
        cv2.putText(canvas, f"{name}: {values[-1]:.4f} (range {low:.3f}-{high:.3f})", (left + 5, 18 + i * 0 if i == 0 else height - 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas[..., ::-1])
