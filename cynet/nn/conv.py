r"""Convolution and pooling: :class:`Conv2d` (im2col and BLAS matrix products, chunk by chunk of the batch),
:class:`MaxPool2d`, :class:`AvgPool2d` and :class:`AdaptiveAvgPool2d` (global average pooling with output size 1).

The spatial layers that :class:`~cynet.nn.BatchNorm2d` and :class:`~cynet.nn.GroupNorm` normalise (CS231n's
conv - batch norm - ReLU - pool block). Inputs are (N, C, H, W) C-contiguous arrays, weights PyTorch's
(F, C, kh, kw). A forward pass runs over chunks of the batch of about :data:`CHUNK_BYTES` of columns each: im2col
of the chunk (:mod:`cynet._kernels.conv`), the product ``W (F, C kh kw) @ cols (C kh kw, m OH OW)``, and the result
put in the images' layout with the bias; the backward, chunk by chunk from the last, rebuilds each chunk's columns
from the kept input (the last chunk's are still in the buffer) for dW, and turns dcols = W^T dout into dx by col2im.
Chunks keep the column matrix in cache between im2col and the product, and the layer's scratch memory small (three
chunk-sized buffers, reused by the next passes) whatever the batch size. A forward takes the buffers out of the layer
while it runs, so that two Python threads running one model's forward at once (a server predicting from several
threads) each work in buffers of their own.
"""
import threading

import numpy as np

from cynet._kernels import load
from cynet._threading import NS_STREAM, kernel_threads
from cynet._validation import describe, float_dtype, native, positive_int
from cynet.nn import _reuse as reuse
from cynet.nn.layers import _add_bias_gradient, _cached, _check_weight_dtype, _initial_parameters
from cynet.nn.module import Module

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]

_kernels = None
_scratch_lock = threading.Lock()     # Conv2d._take_scratch: one thread at a time takes a layer's buffers


def _k():
    """The conv kernel family (loaded on first use)."""
    global _kernels
    if _kernels is None:
        _kernels = load("conv")
    return _kernels


def _pair(layer, name, value, low=1):
    """``value`` (an int or a pair of ints, each >= low) as a pair."""
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}") from None
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{layer}: {name} must be an int >= {low} or a pair of them, got {value!r}")
    return int(a), int(b)


def _square(layer, name, pair):
    """The one value of a pair that must be equal (stride and padding: the kernels take one of each)."""
    if pair[0] != pair[1]:
        raise ValueError(f"{layer}: {name} must be the same along both axes, got {pair}")
    return pair[0]


def _pool_settings(layer, kernel_size, stride, padding):
    """(kernel pair, stride, padding) of a pooling layer: the stride defaults to the (square) kernel, and the padding
    may be at most half the kernel (every window then overlaps the image)."""
    kernel = _pair(layer, "kernel_size", kernel_size)
    if stride is None:
        stride = _square(layer, "kernel_size (the default stride)", kernel)
    stride = _square(layer, "stride", _pair(layer, "stride", stride))
    padding = _square(layer, "padding", _pair(layer, "padding", padding, low=0))
    if 2 * padding > min(kernel):
        raise ValueError(f"{layer}: padding must be at most half the kernel size, got padding {padding} for kernel "
                         f"{kernel}")
    return kernel, stride, padding


def _output_size(size, kernel, stride, pad):
    """(size + 2 pad - kernel) // stride + 1: the positions of a kernel sliding over a padded axis."""
    return (size + 2 * pad - kernel) // stride + 1


# Images per chunk of Conv2d's passes: the chunk's column matrix takes about this many bytes, so that im2col's output
# is still in cache when the product reads it. (256, 32, 16, 16) -> 64 3x3 filters, im2col and the product, 2
# threads: 27 ms in one piece (a 75 MB column matrix), 16 ms in chunks of 16-64 images.
CHUNK_BYTES = 8 * 2**20

# Conv2d's weight and bias gradients come from one Cython pass (row_products) instead of a BLAS product and a NumPy
# sum when F K / (F + K) is below this (F filters, K = C kh kw values per filter): OpenBLAS packs both (F, T) and
# (K, T) operands for F K multiply-adds per column, so small F K / (F + K) leave it waiting on memory. Measured per
# chunk (Intel Xeon, AVX-512; row products vs product + sum, 2 threads): F x K = 32 x 27 1.3 vs 3.2 ms, 64 x 27
# 2.9 vs 4.1, 32 x 72 3.8 vs 5.2 (ratios 14.6, 19.1, 22.2); 32 x 288 2.8 vs 2.8 (28.8); 64 x 144 3.2 vs 2.5 (44.3).
SMALL_GRADIENT_RATIO = 24


def _images(module, x, channels=None):
    """x as a C-contiguous (N, C, H, W) array in the machine's byte order, with C = ``channels`` when given;
    ValueError otherwise."""
    x = native(x)
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{module!r}: expected input of shape (N, {'C' if channels is None else channels}, H, W), "
                         f"got {describe(x)}")
    return np.ascontiguousarray(x)


def _float_images(module, x):
    """x as a C-contiguous float32/float64 (N, C, H, W) array; clear errors otherwise."""
    x = _images(module, x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{module!r}: input must be float32 or float64, got {describe(x)}")
    return x


def _check_fits(module, hw, kernel, pad):
    """ValueError unless an (H, W) image padded by ``pad`` holds the kernel."""
    if hw[0] + 2 * pad < kernel[0] or hw[1] + 2 * pad < kernel[1]:
        raise ValueError(f"{module!r}: the input's (H, W) = {tuple(hw)} with padding {pad} is smaller than the "
                         f"kernel {kernel}")


class Conv2d(Module):
    r"""2-d convolution (cross-correlation, as in every framework) with zero padding.

    .. math::
        y_{n,f,i,j} = b_f + \sum_{c=0}^{C-1} \sum_{a=0}^{k_h-1} \sum_{b'=0}^{k_w-1}
        W_{f,c,a,b'}\, x_{n,c,\, i s - p + a,\, j s - p + b'}

    with :math:`OH = \lfloor (H + 2p - k_h)/s \rfloor + 1` (likewise OW). Per chunk of the batch (see the module
    docstring): forward, im2col (Cython, parallel over the column matrix's rows) and one BLAS product; backward,
    :math:`dW \mathrel{+}= dY\,\text{cols}^T` (computed as its transpose :math:`\text{cols}\,dY^T`, (C k_h k_w, F):
    the same sums, which OpenBLAS runs faster this way round: a (64, 288) gradient over 7,168 pixels 3.7 -> 3.0 ms
    on one thread),
    :math:`db \mathrel{+}= \sum dY`, and, when needed,
    :math:`dx = \text{col2im}(W^T dY)` (parallel over input channels). Where the weight is small for its sums
    (:data:`SMALL_GRADIENT_RATIO`: a first layer's 3 x 3 x 3 filters) dW and db come from one Cython pass per chunk,
    summed in float64 over the chunks, instead of a BLAS product and a NumPy sum. Chunk sizes follow the shapes only,
    so cynet's own kernels (im2col, col2im, the row products) give the same bits for every thread count; the BLAS
    products need not: with OpenBLAS, y, dx and the BLAS-computed dW can differ in their last bits between 1 and 2
    threads, in float32 too (see the README's Threads section).

    Args:
        in_channels (int): C.
        out_channels (int): F.
        kernel_size (int or pair): :math:`(k_h, k_w)`.
        stride (int): s, the same along both axes. Default 1.
        padding (int): p, zeros on every side. Default 0.
        bias (bool): keyword-only, as everything after it (PyTorch's sixth and seventh positional parameters are
            ``dilation`` and ``groups``, which cynet lacks: ``Conv2d(3, 16, 3, 1, 1, 2)`` is a TypeError rather
            than a bias). Learn a bias per output channel. Default True.
        init (str or callable): weight initialisation as :class:`Linear`'s, with fan_in = C k_h k_w ("default" is
            PyTorch's; "he" for ReLU nets). Default "default".
        dtype: float32 (default) or float64.
        generator: a seed or :class:`numpy.random.Generator` for the initial weights (default: the global one).

    Shape:
        x (N, C, H, W) -> y (N, F, OH, OW); weight (F, C, k_h, k_w), bias (F,).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> conv = nn.Conv2d(3, 16, kernel_size=3, padding=1, init="he", generator=0)
        >>> conv(np.ones((2, 3, 32, 32), np.float32)).shape
        (2, 16, 32, 32)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, bias=True, init="default",
                 dtype=np.float32, generator=None):
        super().__init__()
        name = "Conv2d"
        self.in_channels = positive_int(name, "in_channels", in_channels)
        self.out_channels = positive_int(name, "out_channels", out_channels)
        self.kernel_size = _pair(name, "kernel_size", kernel_size)
        self.stride = _square(name, "stride", _pair(name, "stride", stride))
        self.padding = _square(name, "padding", _pair(name, "padding", padding, low=0))
        _initial_parameters(self, (self.out_channels, self.in_channels) + self.kernel_size,
                            self.in_channels * self.kernel_size[0] * self.kernel_size[1], bias, init,
                            float_dtype(name, dtype), generator)
        self._x = None              # the last forward's input (the backward rebuilds its columns chunk by chunk)
        self._cols = None           # scratch: one chunk's column matrix, kept for the next pass
        self._cols_chunk = None     # the first image of the chunk whose columns _cols holds (None: stale)
        self._product = None        # scratch: one chunk's product (F, m OH OW), then its dout
        self._dcols = None          # scratch: one chunk's column gradient
        self._dw_t = None           # scratch: one chunk's weight gradient, transposed (C k_h k_w, F)

    @staticmethod
    def _buffer(kept, size, dtype):
        """``kept`` when it holds ``size`` values of this dtype, else a new flat array starting on a 64-byte line (a
        fresh one per pass would cost its page faults every time; the row products' 64-byte loads split across two
        lines otherwise: 2.9 instead of 2.4 ms for the first CIFAR layer's chunk, one thread)."""
        if kept is not None and kept.size == size and kept.dtype == dtype:
            return kept
        itemsize = np.dtype(dtype).itemsize
        raw = np.empty(size * itemsize + 64, dtype=np.uint8)
        start = -raw.ctypes.data % 64
        return raw[start:start + size * itemsize].view(dtype)

    def _take_scratch(self):
        """``(cols, product)``: the forward's scratch buffers, taken out of the layer (None where another thread's
        forward of this layer holds them: it then allocates its own) until the forward puts them back. Buffers shared
        by two concurrent forwards gave each the other's columns and products (wrong outputs, silently)."""
        with _scratch_lock:
            kept = self._cols, self._product
            self._cols = self._product = self._cols_chunk = None
        return kept

    def _output_hw(self, h, w):
        return (_output_size(h, self.kernel_size[0], self.stride, self.padding),
                _output_size(w, self.kernel_size[1], self.stride, self.padding))

    def _chunks(self, n, columns_per_image, dtype):
        """``(images per chunk, [(first, count), ...])``: chunks of the batch whose column matrix takes about
        :data:`CHUNK_BYTES` (at least one image). Fixed by the shapes alone, so results do not depend on the thread
        count."""
        per_image = self.weight.data[0].size * columns_per_image * np.dtype(dtype).itemsize
        chunk = max(1, min(n, CHUNK_BYTES // max(1, per_image)))
        return chunk, [(first, min(chunk, n - first)) for first in range(0, n, chunk)]

    @staticmethod
    def _rows(buffer, rows, width):
        """The first ``rows`` x ``width`` values of a flat scratch buffer, as a C-contiguous matrix."""
        return buffer[:rows * width].reshape(rows, width)

    def _im2col(self, x, cols):
        _k().im2col(x, self.kernel_size[0], self.kernel_size[1], self.stride, self.padding, cols,
                    kernel_threads(cols.size, NS_STREAM))

    def forward(self, x):
        x = _images(self, x, self.in_channels)
        if x.shape[2] == 0 or x.shape[3] == 0:     # (padding made room for the kernel: an output of bias values)
            raise ValueError(f"{self!r}: the images must hold at least one pixel, got an input of shape "
                             f"{tuple(x.shape)} (empty images)")
        _check_fits(self, x.shape[2:], self.kernel_size, self.padding)
        w = self.weight.data
        _check_weight_dtype(self, x, w.dtype)
        expected = (self.out_channels, self.in_channels) + tuple(self.kernel_size)
        if w.shape != expected:
            raise ValueError(f"{self!r}: weight must have shape {expected}, got {describe(w)} (replaced by hand?)")
        n, features, k = x.shape[0], self.out_channels, w[0].size
        oh, ow = self._output_hw(x.shape[2], x.shape[3])
        columns = oh * ow
        chunk, chunks = self._chunks(n, columns, w.dtype)
        cols, product = self._take_scratch()
        cols = self._buffer(cols, k * chunk * columns, w.dtype)
        product = self._buffer(product, features * chunk * columns, w.dtype)
        y = reuse.empty((n, features, oh, ow), w.dtype)
        images = y.reshape(n, features, columns)
        weights = w.reshape(features, k)
        bias = self.bias.data if self.bias is not None else w.reshape(-1)[:0]
        if self.bias is not None and (bias.shape != (features,) or bias.dtype != w.dtype):
            error = TypeError if bias.dtype != w.dtype else ValueError
            raise error(f"{self!r}: bias must be a {w.dtype} array of shape ({features},), got {describe(bias)} "
                        f"(replaced by hand?)")
        bias = np.ascontiguousarray(bias)
        for first, m in chunks:
            chunk_cols = self._rows(cols, k, m * columns)
            chunk_product = self._rows(product, features, m * columns)
            self._im2col(x[first:first + m], chunk_cols)
            np.matmul(weights, chunk_cols, out=chunk_product)                           # (F, m OH OW)
            _k().to_images(chunk_product, bias, self.bias is not None, images[first:first + m],
                           kernel_threads(m * features * columns, NS_STREAM))
        self._x = x
        with _scratch_lock:     # the buffers back, with the chunk whose columns cols holds (for the backward)
            self._cols, self._product, self._cols_chunk = cols, product, chunks[-1][0] if chunks else None
        return y

    def backward(self, dout, *, input_grad=True):
        x = _cached(self, "_x")
        n, features, k = x.shape[0], self.out_channels, self.weight.data[0].size
        oh, ow = self._output_hw(x.shape[2], x.shape[3])
        columns = oh * ow
        dout = native(dout)
        if dout.shape != (n, features, oh, ow) or dout.dtype != x.dtype:
            raise ValueError(f"{self!r}: dout must be a {x.dtype} array of shape {(n, features, oh, ow)}, got "
                             f"{describe(dout)}")
        dout = np.ascontiguousarray(dout).reshape(n, features, columns)
        chunk, chunks = self._chunks(n, columns, x.dtype)
        cols = self._cols = self._buffer(self._cols, k * chunk * columns, x.dtype)
        d2 = self._product = self._buffer(self._product, features * chunk * columns, x.dtype)
        if input_grad:
            dcols = self._dcols = self._buffer(self._dcols, k * chunk * columns, x.dtype)
            dx = reuse.zeros(x.shape, x.dtype)
        weights = self.weight.data.reshape(features, k)
        small = self.weight.requires_grad and features * k < SMALL_GRADIENT_RATIO * (features + k)
        bias_sums = small and self.bias is not None and self.bias.requires_grad
        if small:     # float64 totals over the chunks, and one chunk's row products
            dw_total, dw_chunk = np.zeros((features, k)), np.empty((features, k))
            db_total, db_chunk = np.zeros(features), np.empty(features)
        for first, m in reversed(chunks):   # the last chunk first: the forward left its columns in the buffer
            chunk_d2 = self._rows(d2, features, m * columns)
            _k().to_columns(dout[first:first + m], chunk_d2, kernel_threads(chunk_d2.size, NS_STREAM))
            if self.weight.requires_grad:
                chunk_cols = self._rows(cols, k, m * columns)
                if self._cols_chunk != first:
                    self._im2col(x[first:first + m], chunk_cols)
                    self._cols_chunk = first
                if small:
                    _k().row_products(chunk_d2, chunk_cols, dw_chunk, db_chunk, bias_sums,
                                      kernel_threads(chunk_d2.size + chunk_cols.size, NS_STREAM))
                    dw_total += dw_chunk
                    if bias_sums:
                        db_total += db_chunk
                else:     # dW^T = cols dY^T (see the class docstring)
                    dw_t = self._dw_t = self._buffer(self._dw_t, k * features, x.dtype).reshape(k, features)
                    np.matmul(chunk_cols, chunk_d2.T, out=dw_t)
                    self.weight.accumulate(dw_t.T.reshape(self.weight.shape))
            if not bias_sums:
                _add_bias_gradient(self.bias, chunk_d2, 1)
            if input_grad:
                chunk_dcols = self._rows(dcols, k, m * columns)
                np.matmul(weights.T, chunk_d2, out=chunk_dcols)
                _k().col2im(chunk_dcols, self.kernel_size[0], self.kernel_size[1], self.stride, self.padding,
                            dx[first:first + m], kernel_threads(chunk_dcols.size, NS_STREAM))
        if small:     # the float64 totals, rounded once
            self.weight.accumulate(dw_total.reshape(self.weight.shape))
        if bias_sums:
            self.bias.accumulate(db_total)
        return dx if input_grad else None

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class MaxPool2d(Module):
    r"""2-d max pooling: the maximum of every ``kernel_size`` window, moved by ``stride``.

    .. math:: y_{n,c,i,j} = \max_{0 \le a < k_h,\ 0 \le b < k_w} x_{n,c,\, i s - p + a,\, j s - p + b}

    (padding positions never win). The backward sends each output's gradient to the position of its window's first
    maximum (row-major order; a NaN counts as maximal), adding where windows overlap.

    Args:
        kernel_size (int or pair): :math:`(k_h, k_w)`.
        stride (int): s. Default: the kernel size (non-overlapping windows; must be square then).
        padding (int): p, at most half the kernel. Default 0.

    Shape:
        x (N, C, H, W) -> y (N, C, OH, OW), with OH = (H + 2p - k_h) // s + 1.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        >>> nn.MaxPool2d(2)(x)
        array([[[[ 5.,  7.],
                 [13., 15.]]]], dtype=float32)
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_settings("MaxPool2d", kernel_size, stride, padding)
        self._idx = None
        self._input_shape = None

    def forward(self, x):
        x = _float_images(self, x)
        if x.shape[2] == 0 or x.shape[3] == 0:          # every window would lie in the padding: no value to take
            raise ValueError(f"{self!r}: every window must hold at least one value of the image, got an input of "
                             f"shape {tuple(x.shape)} (empty images)")
        _check_fits(self, x.shape[2:], self.kernel_size, self.padding)
        oh = _output_size(x.shape[2], self.kernel_size[0], self.stride, self.padding)
        ow = _output_size(x.shape[3], self.kernel_size[1], self.stride, self.padding)
        y = reuse.empty(x.shape[:2] + (oh, ow), x.dtype)
        idx = reuse.empty(y.shape, np.int64)
        _k().maxpool_forward(x, self.kernel_size[0], self.kernel_size[1], self.stride, self.padding, y, idx,
                          kernel_threads(x.size, NS_STREAM))
        self._idx, self._input_shape, self._dtype = idx, x.shape, x.dtype
        return y

    def backward(self, dout, *, input_grad=True):
        idx = _cached(self, "_idx")
        if not input_grad:
            return None
        dout = native(dout)
        if dout.shape != idx.shape or dout.dtype != self._dtype:
            raise ValueError(f"{self!r}: dout must be a {self._dtype} array of shape {idx.shape} (the forward's "
                             f"output), got {describe(dout)}")
        dout = np.ascontiguousarray(dout)
        dx = reuse.empty(self._input_shape, dout.dtype)
        _k().maxpool_backward(dout, idx, dx, kernel_threads(dx.size, NS_STREAM))
        return dx

    def kink_state(self):
        """The position of every window's maximum in the last forward (a copy; None before one). Max pooling is not
        differentiable where two entries of a window tie: a perturbation that changes a winner crossed that kink
        (read by :mod:`cynet.gradcheck`, as :class:`~cynet.nn.Maxout`'s winners are). Read from the indices the
        forward keeps for the backward: nothing is computed until it is called."""
        return None if self._idx is None else self._idx.copy()

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _pool_windows(size, kernel, stride, pad, include_pad):
    """(starts, ends, scales) of AvgPool2d's windows along one axis of ``size``: the window of output o covers
    [o s - p, o s - p + k) clipped to the image; its scale is 1 / (its extent within the padded axis) with
    ``include_pad`` (PyTorch's count_include_pad), else 1 / (its extent within the image)."""
    n_out = _output_size(size, kernel, stride, pad)
    starts = np.arange(n_out, dtype=np.int64) * stride - pad
    padded_ends = np.minimum(starts + kernel, size + pad)
    clipped_starts, clipped_ends = np.maximum(starts, 0), np.minimum(padded_ends, size)
    extent = padded_ends - starts if include_pad else clipped_ends - clipped_starts
    return clipped_starts, clipped_ends, 1.0 / extent.astype(np.float64)


def _adaptive_windows(size, n_out):
    """(starts, ends, scales) of AdaptiveAvgPool2d along one axis: output o averages [floor(o size / n),
    ceil((o + 1) size / n)), PyTorch's windows (they overlap when n does not divide size)."""
    o = np.arange(n_out, dtype=np.int64)
    starts = (o * size) // n_out
    ends = -((-(o + 1) * size) // n_out)
    return starts, ends, 1.0 / (ends - starts).astype(np.float64)


class _AvgPool(Module):
    """Average pooling over windows given per output row and column (the conv kernels' avgpool)."""

    def _windows(self, h, w):
        raise NotImplementedError

    def forward(self, x):
        x = _float_images(self, x)
        with np.errstate(divide="ignore"):                  # (an empty window's scale, refused below)
            rows, cols = self._windows(x.shape[2], x.shape[3])
        if np.any(rows[1] <= rows[0]) or np.any(cols[1] <= cols[0]):
            raise ValueError(f"{self!r}: every window must hold at least one value, got an input of shape "
                             f"{tuple(x.shape)} (empty images, or a kernel_size of 0?)")
        y = reuse.empty(x.shape[:2] + (len(rows[0]), len(cols[0])), x.dtype)
        _k().avgpool_forward(x, rows[0], rows[1], cols[0], cols[1], rows[2], cols[2], y,
                             kernel_threads(x.size, NS_STREAM))
        self._plan, self._input_shape, self._dtype = (rows, cols), x.shape, x.dtype
        return y

    def backward(self, dout, *, input_grad=True):
        rows, cols = _cached(self, "_plan")
        if not input_grad:
            return None
        dout = native(dout)
        shape = self._input_shape[:2] + (len(rows[0]), len(cols[0]))
        if dout.shape != shape or dout.dtype != self._dtype:
            raise ValueError(f"{self!r}: dout must be a {self._dtype} array of shape {shape} (the forward's output), "
                             f"got {describe(dout)}")
        dx = reuse.empty(self._input_shape, dout.dtype)
        _k().avgpool_backward(np.ascontiguousarray(dout), rows[0], rows[1], cols[0], cols[1], rows[2], cols[2], dx,
                              kernel_threads(dx.size, NS_STREAM))
        return dx


class AvgPool2d(_AvgPool):
    r"""2-d average pooling: the mean of every ``kernel_size`` window, moved by ``stride`` (PyTorch's AvgPool2d).

    .. math:: y_{n,c,i,j} = \frac{1}{|w_{ij}|} \sum_{(r, q) \in w_{ij}} x_{n,c,r,q}

    over the window :math:`w_{ij}` of rows :math:`[i s - p, i s - p + k_h)` and columns likewise, where padding
    counts as zeros; the divisor is the window's size within the padded image (``count_include_pad=True``, PyTorch's
    default) or within the image. The backward spreads each output's gradient evenly over its window.

    Args:
        kernel_size (int or pair): :math:`(k_h, k_w)`.
        stride (int): s. Default: the kernel size (must be square then).
        padding (int): p, at most half the kernel. Default 0.
        count_include_pad (bool): keyword-only (PyTorch's fourth positional parameter is ``ceil_mode``, which cynet
            lacks: ``AvgPool2d(2, 2, 0, True)`` is a TypeError). Divide by the padded window's size. Default True.

    Shape:
        x (N, C, H, W) -> y (N, C, OH, OW), with OH = (H + 2p - k_h) // s + 1.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.AvgPool2d(2)(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
        array([[[[ 2.5,  4.5],
                 [10.5, 12.5]]]], dtype=float32)
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_settings("AvgPool2d", kernel_size, stride, padding)
        if not isinstance(count_include_pad, (bool, np.bool_)):
            raise TypeError(f"AvgPool2d: count_include_pad must be True or False, got {count_include_pad!r}")
        self.count_include_pad = bool(count_include_pad)
        self._plan = None

    def _windows(self, h, w):
        _check_fits(self, (h, w), self.kernel_size, self.padding)
        return (_pool_windows(h, self.kernel_size[0], self.stride, self.padding, self.count_include_pad),
                _pool_windows(w, self.kernel_size[1], self.stride, self.padding, self.count_include_pad))

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + ("" if self.count_include_pad else ", count_include_pad=False"))


class AdaptiveAvgPool2d(_AvgPool):
    r"""Average pooling to a fixed output size, whatever the input's (PyTorch's AdaptiveAvgPool2d): output row i
    averages input rows :math:`[\lfloor iH/OH \rfloor, \lceil (i+1)H/OH \rceil)`, columns likewise.
    ``AdaptiveAvgPool2d(1)`` is global average pooling, the usual head of a convolutional net (one value per
    channel before the classifier).

    Args:
        output_size (int or pair): (OH, OW), each >= 1.

    Shape:
        x (N, C, H, W) -> y (N, C, OH, OW).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.AdaptiveAvgPool2d(1)(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)).ravel()
        array([1.5, 5.5], dtype=float32)
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _pair("AdaptiveAvgPool2d", "output_size", output_size)
        self._plan = None

    def _windows(self, h, w):
        return _adaptive_windows(h, self.output_size[0]), _adaptive_windows(w, self.output_size[1])

    def extra_repr(self):
        return f"output_size={self.output_size}"
