"""The heatmap: which parts of the image the prediction came from (class activation map).

Every network here ends in GlobalAveragePooling2D -> Dropout -> Dense(softmax), so the
logit of class c is the mean over positions of feature_map @ kernel[:, c] plus its bias:
the class activation map (CAM, Zhou et al. 2016) is that product before the mean, and for
these networks Grad-CAM gives the same map without a gradient tape. `cam_head` rebuilds
the graph up to the pooling layer's input (for a nested backbone such as MobileNetV3 the
backbone's output is a tensor of the outer graph, so no inner layer is reached into), and
lungclf.inference.explain_fn computes logits, features and maps in one traced call.

    from lungclf.heatmap import overlay
    picture = overlay(rgb, cam, opacity=0.5)   # uint8 RGB: the map in colour over the image

scripts/benchmark_heatmap.py measures its cost against the bare forward pass.
"""

import cv2
import numpy as np


class NoHeatmap(ValueError):
    """A network without global average pooling before its softmax head."""


def cam_head(model):
    """(keras.Model image -> [feature map (N, h, w, K), features (N, K)], kernel (K, C), bias (C,)).

    The feature map is the input of the model's last GlobalAveragePooling2D layer, whose
    pooled output must be what the softmax Dense layer reads (through Dropout)."""
    import keras

    last = model.layers[-1]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not isinstance(last, keras.layers.Dense) or not pools:
        raise NoHeatmap(f"{model.name}: no global average pooling before the softmax layer, so no "
                        "class activation map")
    gap = pools[-1]
    if tuple(gap.output.shape[1:]) != tuple(last.input.shape[1:]):
        raise NoHeatmap(f"{model.name}: the pooled features {gap.output.shape} are not what the "
                        f"softmax layer reads {last.input.shape}")
    maps = keras.Model(model.inputs[0], [gap.input, last.input], name="cam")
    return maps, last.kernel, last.bias


def normalise(cam):
    """A raw map (h, w) -> 0..1: positive evidence only (ReLU), divided by its maximum."""
    cam = np.maximum(np.asarray(cam, np.float32), 0)
    top = cam.max()
    return cam / top if top > 0 else cam


def colour(heat, shape):
    """A 0..1 map upsampled (bilinear) to shape (H, W), in the JET colour map -> uint8 RGB."""
    h = cv2.resize(np.asarray(heat, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    bgr = cv2.applyColorMap(np.clip(h * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return bgr[:, :, ::-1]


def overlay(rgb, cam, opacity=0.5):
    """The map (raw, any size) in colour over the image rgb (H, W, 3) uint8, blended at
    `opacity` (0: the image alone, 1: the map alone)."""
    opacity = float(np.clip(opacity, 0.0, 1.0))
    heat = colour(normalise(cam), rgb.shape[:2])
    return cv2.addWeighted(heat, opacity, np.asarray(rgb, np.uint8), 1.0 - opacity, 0.0)


def display_size(shape, longest=384):
    """(H, W) to show an image at: its own size, shrunk to `longest` pixels on its long side."""
    h, w = shape[:2]
    scale = min(1.0, longest / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def for_display(rgb):
    """The decoded image (H, W, 3) uint8 at display size, for the overlay."""
    h, w = display_size(rgb.shape)
    if (h, w) == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
