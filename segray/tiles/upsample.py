"""Class masks at a frame's own size from logits at the model's size, without full-size logits.

The reference is ``F.interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)``.
Each full-size pixel's logits are a convex combination of the (up to) four model-size logit
vectors around it. If those four share their argmax class ``c`` (``torch.argmax``'s class: the
first of equal maxima), ``c`` is also the argmax of the combination: for every other class ``k``,
each corner has ``l_k <= l_c`` (``<`` when ``k`` comes first), and a weighted sum with non-negative
weights keeps the inequality (in floating point too, since rounding is monotonic). So only the
pixels whose four corners disagree, the class boundaries, need their logits interpolated; every
other pixel takes its cell's class directly.

For a frame of H x W pixels, C classes and logits of h x w, the work is an argmax at h x w, a
uint8 gather to H x W, and exact interpolation in the boundary cells only. There, each pixel's
logits are computed in the order, and with the fused multiply-adds, of PyTorch's CPU kernel for
contiguous tensors (float32 products are exact in float64, then rounded once to float32 per
fused step), so masks and class counts equal the reference's. A frame smaller than the model
input on either side is cheap at any size and goes through ``F.interpolate`` itself.

Memory per frame: the uint8 mask, and a few values per pixel of the boundary cells, never
C x H x W floats. The same code runs on numpy arrays (on a CPU, where numpy's gathers and argmax
are several times faster than torch's) and on torch tensors (on a GPU).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Float32 values held at once where many classes can win (16 MB): bounds the memory of frames whose
#: logits have boundaries everywhere.
MANY_VALUES = 2**22

#: Above this share of the frame's pixels in boundary cells (logits that change class from one
#: model pixel to the next almost everywhere), full-size logits are cheaper, when they fit in
#: ``DENSE_BYTES``.
DENSE_BOUNDARY = 0.5
DENSE_BYTES = 256 * 2**20

#: A numpy array or a torch tensor: the functions below take ``xp``, the module that works on it.
Array = Any


def _cast(a: Array, dtype: str) -> Array:
    return a.astype(dtype) if isinstance(a, np.ndarray) else a.to(getattr(torch, dtype))


def _take(xp: ModuleType, a: Array, index: Array, axis: int) -> Array:
    return np.take(a, index, axis=axis) if xp is np else torch.index_select(a, axis, index)


def _nonzero(xp: ModuleType, a: Array) -> tuple[Array, ...]:
    return np.nonzero(a) if xp is np else torch.nonzero(a, as_tuple=True)


def _fma(a: Array, b: Array, c: Array) -> Array:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add: the float32 product is exact in
    float64, so the only rounding left is the final one to float32."""
    return _cast(_cast(a, "float64") * _cast(b, "float64") + _cast(c, "float64"), "float32")


class _Axis:
    """One axis of the resize, computed as PyTorch's CPU kernel does (``align_corners=False``): for
    each output position its lower source index ``i0`` and the float32 weights of the lower and
    upper source. The output positions are also cut into segments of at most ``span`` consecutive
    positions with one lower source index (``seg_cell``): ``seg_pos``, ``seg_w0``, ``seg_w1`` and
    ``seg_valid`` are (segments, span), padded by repeating the segment's first position."""

    def __init__(self, n_in: int, n_out: int, xp: ModuleType, device: torch.device) -> None:
        scale = np.float32(n_in) / np.float32(n_out)
        centre = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
        src = (np.float64(scale) * centre.astype(np.float64) - 0.5).astype(np.float32)  # one fused rounding
        src = np.maximum(src, np.float32(0.0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
        w0 = (np.float32(1.0) - w1).astype(np.float32)
        count = np.bincount(i0, minlength=n_in)
        self.span = span = -(-n_out // n_in)  # the usual positions per source index (the first has more)
        pieces = -(-count // span)
        seg_cell = np.repeat(np.arange(n_in), pieces)
        seg_first = np.repeat(np.cumsum(count) - count, pieces) + span * (
            np.arange(len(seg_cell)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        )
        seg_end = np.minimum(seg_first + span, np.repeat(np.cumsum(count), pieces))
        offsets = np.arange(span)
        seg_valid = seg_first[:, None] + offsets[None] < seg_end[:, None]
        seg_pos = np.where(seg_valid, seg_first[:, None] + offsets[None], seg_first[:, None])
        put = (lambda a: a) if xp is np else (lambda a: torch.from_numpy(a).to(device))  # noqa: E731
        self.i0, self.w0, self.w1, self.count = put(i0), put(w0), put(w1), put(count)
        self.seg_cell, self.seg_pos, self.seg_valid = put(seg_cell), put(seg_pos), put(seg_valid)
        self.seg_w0, self.seg_w1 = put(w0[seg_pos]), put(w1[seg_pos])


def _boundary_cells(xp: ModuleType, cls: Array) -> Array:
    """(h, w) argmax classes -> (h, w) bool: the cell whose top-left corner is (i, j) (its other
    corners clamped at the last row and column) has corners of more than one class."""
    down = xp.concatenate([cls[1:], cls[-1:]], 0)
    right = xp.concatenate([cls[:, 1:], cls[:, -1:]], 1)
    diag = xp.concatenate([down[:, 1:], down[:, -1:]], 1)
    return (cls != down) | (cls != right) | (cls != diag)


class _Pairs:
    """(model row, frame column) pairs and their logits interpolated along x (the kernel's first
    step) on the pair's model row (``top``) and the next (``bottom``)."""

    def __init__(self, xp: ModuleType, src: Array, ii: Array, xx: Array, xs: _Axis) -> None:
        c, h, w = src.shape
        self.xp, self.flat = xp, src.reshape(c, h * w)
        x0 = xs.i0[xx]
        x1 = xp.where(x0 + 1 < w, x0 + 1, x0)
        i1 = xp.where(ii + 1 < h, ii + 1, ii)
        self.index = ((ii * w + x0, ii * w + x1), (i1 * w + x0, i1 * w + x1))
        self.wx0, self.wx1 = xs.w0[xx], xs.w1[xx]

    def values(self, exact: bool, classes: Array | None = None, pairs: Array | None = None) -> list[Array]:
        """[top, bottom]: (C, P) for every class and pair, else class ``classes[k]`` of pair
        ``pairs[k]`` (broadcast). ``exact``: with the kernel's fused rounding; else plain float32,
        within a few units in the last place of it."""
        out = []
        for left, right in self.index:
            if classes is None:
                v0, v1 = _take(self.xp, self.flat, left, 1), _take(self.xp, self.flat, right, 1)
                w0, w1 = self.wx0, self.wx1
            else:
                v0, v1 = self.flat[classes, left[pairs]], self.flat[classes, right[pairs]]
                w0, w1 = self.wx0[pairs], self.wx1[pairs]
            out.append(_fma(v0, w0, v1 * w1) if exact else v0 * w0 + v1 * w1)
        return out


def _candidates(xp: ModuleType, top: Array, bottom: Array, tol: float) -> Array:
    """(C, P) bool: the classes that can win somewhere between two interpolated row values.

    Between the rows a class's value lies between its two row values, so a class whose larger
    row value is below another class's smaller one cannot win. ``tol`` absorbs the rounding of
    plain float32 values (rather than the exact ones) and of weights that sum to 1 only to within
    a unit in the last place.
    """
    low = xp.amax(xp.minimum(top, bottom), axis=0)  # (P,): the winner is at least this
    return xp.maximum(top, bottom) >= low - tol


def _boundary_pixels(
    xp: ModuleType, src: Array, boundary: Array, ys: _Axis, xs: _Axis
) -> tuple[Array, Array, Array, Array]:
    """The exact classes of the pixels in boundary cells: (rows, columns, classes, valid), each
    (pairs, ys.span), where ``valid`` marks the entries that are not padding.

    Pixels are taken a (row segment, frame column) pair at a time: the logits of the segment's
    model row and the next are interpolated along x once, then each frame row of the segment
    along y from them. Where at most two classes can win (almost everywhere), only those two are
    interpolated along y; elsewhere every class is.
    """
    # Plain float32 values are within about 2.3e-6 x the largest logit of the exact ones (a few
    # roundings of at most 6e-8 relative each); a difference within ``tol`` of zero is recomputed.
    tol = 4e-6 * float(abs(src).max())
    ss, xx = _nonzero(xp, _take(xp, _take(xp, boundary, ys.seg_cell, 0), xs.i0, 1))  # (segment, column) pairs
    pairs = _Pairs(xp, src, ys.seg_cell[ss], xx, xs)
    top, bottom = pairs.values(exact=False)  # (C, P)
    yy, valid, wy0, wy1 = ys.seg_pos[ss], ys.seg_valid[ss], ys.seg_w0[ss], ys.seg_w1[ss]  # (P, span)
    cand = _candidates(xp, top, bottom, tol)
    few = xp.sum(cand, axis=0) <= 2
    if bool(few.all()):
        return (
            yy,
            xp.broadcast_to(xx[:, None], yy.shape),
            _pick_of_two(xp, pairs, top, bottom, cand, wy0, wy1, tol),
            valid,
        )
    classes = _cast(xp.zeros_like(yy), "int64")
    q = _nonzero(xp, few)[0]
    classes[q] = _pick_of_two(xp, pairs, top[:, q], bottom[:, q], cand[:, q], wy0[q], wy1[q], tol, q)
    q = _nonzero(xp, ~few)[0]
    step = max(1, MANY_VALUES // (top.shape[0] * ys.span))
    for k in range(0, len(q), step):
        part = q[k : k + step]
        classes[part] = _pick_of_many(xp, pairs, top[:, part], bottom[:, part], wy0[part], wy1[part], tol, part)
    # Padding entries repeat their segment's first row with its weights, so writing them is
    # harmless; they are left out of the counts.
    return yy, xp.broadcast_to(xx[:, None], yy.shape), classes, valid


def _pick_of_many(
    xp: ModuleType, pairs: _Pairs, top: Array, bottom: Array, wy0: Array, wy1: Array, tol: float, which: Array
) -> Array:
    """(Q, span) classes where any class may win: every class in plain float32 first, and
    recomputed with the kernel's exact rounding where the best two are within ``tol``."""
    values = top[:, :, None] * wy0[None] + bottom[:, :, None] * wy1[None]  # (C, Q, span)
    best = xp.argmax(values, axis=0)
    high = xp.amax(values, axis=0)
    close = xp.sum(values >= high - tol, axis=0) > 1
    if bool(close.any()):
        r, k = _nonzero(xp, close)
        every = xp.arange(top.shape[0]) if xp is np else torch.arange(top.shape[0], device=top.device)
        exact_top, exact_bottom = pairs.values(True, every[:, None], which[r][None])  # (C, n)
        best[r, k] = xp.argmax(_fma(exact_top, wy0[r, k][None], exact_bottom * wy1[r, k][None]), axis=0)
    return best


def _pick_of_two(
    xp: ModuleType,
    pairs: _Pairs,
    top: Array,
    bottom: Array,
    cand: Array,
    wy0: Array,
    wy1: Array,
    tol: float,
    which: Array | None = None,
) -> Array:
    """(P, span) classes where at most two classes ``a <= b`` can win: compared in plain float32
    first, and recomputed with the kernel's exact rounding where they are within ``tol`` of a tie.
    ``which``: the pairs' indices in ``pairs`` (all of them when None)."""
    c = top.shape[0]
    a = xp.argmax(_cast(cand, "uint8"), axis=0)  # the lowest candidate
    b = c - 1 - xp.argmax(_cast(xp.flip(cand, (0,)), "uint8"), axis=0)  # the highest (a when alone)
    p = xp.arange(len(a)) if xp is np else torch.arange(len(a), device=a.device)
    ta, ba, tb, bb = top[a, p][:, None], bottom[a, p][:, None], top[b, p][:, None], bottom[b, p][:, None]
    va = ta * wy0 + ba * wy1
    diff = (tb * wy0 + bb * wy1) - va
    out = xp.where(diff > 0, b[:, None], a[:, None])
    # Within rounding of a tie; two classes with equal logits (as where a head outputs its bias
    # alone) tie exactly in both computations, and their plain result (the lower class) stands.
    close = (diff <= tol) & (diff >= -tol) & ~((ta == tb) & (ba == bb))
    if bool(close.any()):
        r, k = _nonzero(xp, close)
        at = r if which is None else which[r]
        exact = [pairs.values(True, cls[r], at) for cls in (a, b)]
        exact_a, exact_b = (_fma(t, wy0[r, k], u * wy1[r, k]) for t, u in exact)
        out[r, k] = xp.where(exact_b > exact_a, b[r], a[r])  # a tie goes to the lower class, as argmax's
    return out


def mask_from_logits(
    logits: torch.Tensor, height: int, width: int, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) logits of one frame -> ((height, width) uint8 mask, (C,) int64 class counts), on
    the logits' device, equal to the argmax of bilinearly resized logits (module docstring).

    ``backend``: ``"auto"`` computes with numpy on a CPU and with torch elsewhere; ``"torch"``
    uses torch on a CPU too (the GPU's code path, for tests).
    """
    c, h, w = logits.shape
    src_t = logits.float()
    if height < h or width < w:  # a downscale: the full-size logits are no larger than these
        return _interpolated(src_t, height, width)
    on_cpu = logits.device.type == "cpu" and backend != "torch"
    xp: ModuleType = np if on_cpu else torch
    src = src_t.detach().contiguous().numpy() if on_cpu else src_t.contiguous()
    cls = xp.argmax(src, axis=0)  # (h, w)
    ys, xs = _Axis(h, height, xp, logits.device), _Axis(w, width, xp, logits.device)
    # Each pixel takes its cell's (top-left corner's) class: along columns at model height, then rows.
    mask = _take(xp, _take(xp, _cast(cls, "uint8"), xs.i0, 1), ys.i0, 0)
    boundary = _boundary_cells(xp, cls)
    area = ys.count[:, None] * xs.count[None]  # pixels per cell
    counts = xp.bincount(cls[~boundary], weights=_cast(area[~boundary], "float64"), minlength=c)[:c]
    counts = _cast(xp.round(counts), "int64")
    in_boundary = int(area[boundary].sum())
    if in_boundary > DENSE_BOUNDARY * height * width and c * height * width * 4 <= DENSE_BYTES:
        return _interpolated(src_t, height, width)  # boundaries everywhere: the direct way is cheaper
    if in_boundary:
        rows, cols, classes, valid = _boundary_pixels(xp, src, boundary, ys, xs)
        mask[rows, cols] = _cast(classes, "uint8")
        counts += _cast(
            xp.round(xp.bincount(classes.ravel(), weights=_cast(valid.ravel(), "float64"), minlength=c)), "int64"
        )[:c]
    if on_cpu:
        return torch.from_numpy(mask), torch.from_numpy(counts)
    return mask, counts


def _interpolated(logits: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference itself: full-size logits, then argmax."""
    up = F.interpolate(logits[None].contiguous(), size=(height, width), mode="bilinear", align_corners=False)[0]
    mask = up.argmax(dim=0).to(torch.uint8)
    return mask, torch.bincount(mask.flatten(), minlength=logits.shape[0])[: logits.shape[0]]


def masks_from_logits(logits: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) logits of same-sized frames -> (N, height, width) uint8 masks and (N, C) int64
    class counts on the host; only the uint8 masks and the counts leave the logits' device."""
    n, c = logits.shape[:2]
    masks = np.empty((n, height, width), dtype=np.uint8)
    counts = np.empty((n, c), dtype=np.int64)
    for i in range(n):
        m, k = mask_from_logits(logits[i], height, width)
        masks[i] = m.cpu().numpy()
        counts[i] = k.cpu().numpy()
    return masks, counts
