"""Direct sparse convolution in the channel-major, batch-innermost layout ``(C, H, W, N)`` (numba, CPU).

The input is copied once into a zero-padded ``(C, H + 2 * ph, W + 2 * pw, N)`` buffer. Every kernel tap
``(c, i, j)`` of output channel ``o`` then reaches the whole output: output ``(oh, ow)`` reads padded input
``(oh * sh + i * dh, ow * sw + j * dw)``, and with ``N`` innermost each position is ``N`` contiguous numbers.
With stride 1 along the width an output row's ``OW * N`` numbers read one contiguous span of the input row,
so a tap is one vector op of ``OW * N`` floats (1,792 at 14 wide, batch 128), not the short rows of 14 that
made a direct kernel in NCHW slower than unfold + SpMM. No unfolded input (``kh * kw`` times the input) is
made or saved: the backward keeps the padded input only.

* forward        per output channel ``o`` (parallel): ``out[o, oh] += sum_taps w * xpad[c, ih, span]``,
                 four taps per pass over the output row (the accumulator row stays in L1, as
                 :func:`redr.sparse.kernels._accumulate_row` does for linear layers)
* grad values    per output channel: ``gw = <g[o, oh, span], xpad[c, ih, span]>`` summed over rows, in the
                 forward's loop order (four taps per pass over a gradient row; about 4x faster than a pass over
                 all of ``g[o]`` per four taps, which read the input from L3)
* grad input     per input channel ``c`` (parallel, the transposed CSR: no two jobs write one channel):
                 ``gxpad[c, ih, span] += sum_o w * g[o, oh, span]``, input row by input row, four output
                 channels of one tap per pass

Stride > 1 along the width makes the inner loop one ``N``-long run per output column. The layout changes
(NCHW -> padded CHWN for the input and the output gradient, back for the output and the input gradient) are
four copies per step, about a fifth of the step at 14x14; the layer takes and gives NCHW (a CHWN tensor between
layers would need max-pool, ReLU and flatten in that layout too). ``backend="numba"`` uses these kernels or
unfold + SpMM by :func:`use_direct` (the rule and the measurements behind it are in ``docs/conv.md``).
"""
from __future__ import annotations

import torch

from redr.sparse import kernels

#: ``SparseConv2d(algorithm=...)`` values: which CPU (numba) algorithm computes the convolution.
CONV_ALGORITHMS = ("auto", "direct", "unfold")

#: Numbers per contiguous run (output columns x batch) in the direct kernels, at most. Measured on
#: 64 -> 64, 3x3, 28x28, batch 128, d=0.1 (docs/conv.md): runs of 512 / 1,024 / 2,048 numbers (column tiles,
#: a tile at a time down all rows) were 1.6x / 1.5x / 1.1x slower than whole rows (3,584), so rows are cut
#: only beyond 65,536 numbers. Read at call time (a test shrinks it).
RUN_FLOATS = 65536

#: Padded input bytes per batch chunk: the direct kernels run a chunk of the batch at a time. Measured on
#: 64 -> 64, 3x3, batch 128, d=0.1 (docs/conv.md): chunks of 1 MiB / 256 KiB were 3-4x / 11-17x slower than
#: none (shorter runs), 16 MiB (two chunks at 28x28, none at 14x14) was within the noise of none. Read at call time.
CHUNK_BYTES = 16 * 2**20

#: ``algorithm="auto"`` takes the direct kernels when a contiguous run (output row x batch, or the batch
#: alone when the width stride is above 1) has at least this many numbers, unfold + SpMM otherwise.
DIRECT_MIN_RUN = 128

if kernels.HAVE_NUMBA:
    import numba
    import numpy as np
    from numba import njit, prange

    @njit(cache=True)
    def run_columns(sw, batch, out_w, run_floats):  # pragma: no cover - compiled
        """Output columns per run: ``run_floats // batch`` (at least 1) with width stride 1, else 1."""
        return max(1, min(out_w, run_floats // batch)) if sw == 1 else 1

    @njit(cache=True)
    def _runs(oh, i, j, sh, sw, dh, dw, out_w, width_p, batch, cols, r):  # pragma: no cover - compiled
        """Run ``r`` of output row ``oh`` for tap ``(i, j)``: its start in the output channel, its start in the
        padded input channel and its length. A run is ``cols`` output columns (``cols = 1`` when the width
        stride is above 1: then only ``batch`` numbers are contiguous)."""
        ow0 = r * cols
        length = (min(out_w, ow0 + cols) - ow0) * batch
        return (oh * out_w + ow0) * batch, ((oh * sh + i * dh) * width_p + ow0 * sw + j * dw) * batch, length

    @njit(parallel=True, fastmath=True, cache=True)
    def _pad_to_chwn(x, ph, pw, out):  # pragma: no cover - compiled
        """``out[c, h + ph, w + pw, n] = x[n, c, h, w]``, zero border (``out`` is ``(C, Hp, Wp, N)``)."""
        batch, channels, height, width = x.shape
        width_p = out.shape[2]
        for c in prange(channels):
            dst = out[c]
            for h in range(out.shape[1]):
                if h < ph or h >= ph + height:
                    dst[h, :, :] = 0.0
                    continue
                dst[h, :pw, :] = 0.0
                dst[h, pw + width:width_p, :] = 0.0
                for w in range(width):
                    for n in range(batch):
                        dst[h, pw + w, n] = x[n, c, h - ph, w]

    @njit(parallel=True, fastmath=True, cache=True)
    def _to_chwn(g, out):  # pragma: no cover - compiled
        """``out[c, h, w, n] = g[n, c, h, w]`` (an output gradient into the kernels' layout)."""
        batch, channels, height, width = g.shape
        for c in prange(channels):
            for h in range(height):
                for w in range(width):
                    for n in range(batch):
                        out[c, h, w, n] = g[n, c, h, w]

    @njit(parallel=True, fastmath=True, cache=True)
    def _from_chwn(src, ph, pw, out):  # pragma: no cover - compiled
        """``out[n, c, h, w] = src[c, h + ph, w + pw, n]`` (a result back to NCHW, cropping a padding)."""
        batch, channels, height, width = out.shape
        for c in prange(channels):  # batch outer: contiguous writes (3x faster than batch inner at 28x28)
            for h in range(height):
                for n in range(batch):
                    for w in range(width):
                        out[n, c, h, w] = src[c, h + ph, w + pw, n]

    @njit(parallel=True, fastmath=True, cache=True)
    def _forward_direct(crow, col, vals, xpad, bias, kh, kw, sh, sw, dh, dw, run_floats, out):  # pragma: no cover - compiled
        """``out[o, oh, ow, :] = bias[o] + sum_k vals[k] * xpad[c_k, oh*sh + i_k*dh, ow*sw + j_k*dw, :]``."""
        n_out, out_h, out_w, batch = out.shape
        width_p = xpad.shape[2]
        taps = kh * kw
        cols = run_columns(sw, batch, out_w, run_floats)
        runs = (out_w + cols - 1) // cols
        for o in prange(n_out):
            acc = out[o].reshape(out_h * out_w * batch)
            acc[:] = bias[o]
            start, end = crow[o], crow[o + 1]
            for r in range(runs):  # a column tile at a time down all rows: its input rows stay in L2
                for oh in range(out_h):
                    k = start
                    while k + 4 <= end:
                        c0, c1, c2, c3 = col[k] // taps, col[k + 1] // taps, col[k + 2] // taps, col[k + 3] // taps
                        t0, t1, t2, t3 = col[k] % taps, col[k + 1] % taps, col[k + 2] % taps, col[k + 3] % taps
                        d, s0, run_len = _runs(oh, t0 // kw, t0 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        d, s1, run_len = _runs(oh, t1 // kw, t1 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        d, s2, run_len = _runs(oh, t2 // kw, t2 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        d, s3, run_len = _runs(oh, t3 // kw, t3 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        x0, x1 = xpad[c0].reshape(-1)[s0:s0 + run_len], xpad[c1].reshape(-1)[s1:s1 + run_len]
                        x2, x3 = xpad[c2].reshape(-1)[s2:s2 + run_len], xpad[c3].reshape(-1)[s3:s3 + run_len]
                        w0, w1, w2, w3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
                        a = acc[d:d + run_len]
                        for b in range(run_len):
                            a[b] += w0 * x0[b] + w1 * x1[b] + w2 * x2[b] + w3 * x3[b]
                        k += 4
                    while k < end:
                        c, t = col[k] // taps, col[k] % taps
                        d, s, run_len = _runs(oh, t // kw, t % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        src, w = xpad[c].reshape(-1)[s:s + run_len], vals[k]
                        a = acc[d:d + run_len]
                        for b in range(run_len):
                            a[b] += w * src[b]
                        k += 1

    @njit(parallel=True, fastmath=True, cache=True)
    def _grad_values_direct(crow, col, g, xpad, kh, kw, sh, sw, dh, dw, run_floats, out):  # pragma: no cover - compiled
        """``out[k] = sum_{oh, ow, n} g[o, oh, ow, n] * xpad[c_k, oh*sh + i_k*dh, ow*sw + j_k*dw, n]``.

        Output row by output row (the loop order of the forward): the gradient row stays in L1 and consecutive
        rows reuse the input rows in L2; per-tap sums over rows are kept in ``sums``."""
        n_out, out_h, out_w, batch = g.shape
        width_p = xpad.shape[2]
        taps = kh * kw
        cols = run_columns(sw, batch, out_w, run_floats)
        runs = (out_w + cols - 1) // cols
        for o in prange(n_out):
            go = g[o].reshape(-1)
            start, end = crow[o], crow[o + 1]
            sums = np.zeros(end - start, dtype=np.float32)
            for r in range(runs):  # a column tile at a time down all rows: its input rows stay in L2
                for oh in range(out_h):
                    k = start
                    while k < end:
                        m = min(4, end - k)  # taps in this pass; missing ones repeat the last (their sums are dropped)
                        c0, t0 = col[k] // taps, col[k] % taps
                        c1, t1 = col[k + min(1, m - 1)] // taps, col[k + min(1, m - 1)] % taps
                        c2, t2 = col[k + min(2, m - 1)] // taps, col[k + min(2, m - 1)] % taps
                        c3, t3 = col[k + min(3, m - 1)] // taps, col[k + min(3, m - 1)] % taps
                        d, s0, run_len = _runs(oh, t0 // kw, t0 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        d, s1, run_len = _runs(oh, t1 // kw, t1 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        d, s2, run_len = _runs(oh, t2 // kw, t2 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        d, s3, run_len = _runs(oh, t3 // kw, t3 % kw, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                        gs = go[d:d + run_len]
                        x0, x1 = xpad[c0].reshape(-1)[s0:s0 + run_len], xpad[c1].reshape(-1)[s1:s1 + run_len]
                        x2, x3 = xpad[c2].reshape(-1)[s2:s2 + run_len], xpad[c3].reshape(-1)[s3:s3 + run_len]
                        a0 = a1 = a2 = a3 = numba.float32(0.0)
                        for b in range(run_len):
                            gb = gs[b]
                            a0 += gb * x0[b]
                            a1 += gb * x1[b]
                            a2 += gb * x2[b]
                            a3 += gb * x3[b]
                        sums[k - start] += a0
                        if m > 1:
                            sums[k - start + 1] += a1
                        if m > 2:
                            sums[k - start + 2] += a2
                        if m > 3:
                            sums[k - start + 3] += a3
                        k += m
            out[start:end] = sums

    @njit(parallel=True, fastmath=True, cache=True)
    def _grad_input_direct(crow_t, row_t, vals_t, g, kh, kw, sh, sw, dh, dw, run_floats, gxpad):  # pragma: no cover - compiled
        """``gxpad[c, oh*sh + i*dh, ow*sw + j*dw, :] += vals * g[o, oh, ow, :]`` over the transposed CSR, one input
        channel per job (``gxpad`` zeroed, padded like the forward's input). Column tile by tile, input row by
        input row: the run being summed stays in L1 and consecutive rows reuse the gradient's runs in L2."""
        n_out, out_h, out_w, batch = g.shape
        channels, height_p, width_p = gxpad.shape[0], gxpad.shape[1], gxpad.shape[2]
        taps = kh * kw
        cols = run_columns(sw, batch, out_w, run_floats)
        runs = (out_w + cols - 1) // cols
        for c in prange(channels):
            acc = gxpad[c].reshape(-1)
            for r in range(runs):
                for ih in range(height_p):
                    for i in range(kh):
                        if (ih - i * dh) % sh != 0 or ih < i * dh:
                            continue
                        oh = (ih - i * dh) // sh
                        if oh >= out_h:
                            continue
                        for j in range(kw):
                            row = c * taps + i * kw + j
                            start, end = crow_t[row], crow_t[row + 1]
                            d, s, run_len = _runs(oh, i, j, sh, sw, dh, dw, out_w, width_p, batch, cols, r)
                            a = acc[s:s + run_len]
                            e = start
                            while e + 4 <= end:
                                g0, g1 = g[row_t[e]].reshape(-1)[d:d + run_len], g[row_t[e + 1]].reshape(-1)[d:d + run_len]
                                g2, g3 = g[row_t[e + 2]].reshape(-1)[d:d + run_len], g[row_t[e + 3]].reshape(-1)[d:d + run_len]
                                w0, w1, w2, w3 = vals_t[e], vals_t[e + 1], vals_t[e + 2], vals_t[e + 3]
                                for b in range(run_len):
                                    a[b] += w0 * g0[b] + w1 * g1[b] + w2 * g2[b] + w3 * g3[b]
                                e += 4
                            while e < end:
                                src, w = g[row_t[e]].reshape(-1)[d:d + run_len], vals_t[e]
                                for b in range(run_len):
                                    a[b] += w * src[b]
                                e += 1


def use_direct(algorithm: str, geometry, backend: str, dtype: torch.dtype, batch: int, out_width: int) -> bool:
    """Whether the numba path takes the direct kernels. ``auto``: when a contiguous run has at least
    ``DIRECT_MIN_RUN`` numbers (the short runs of a small batch were what made a direct kernel lose)."""
    if backend != "numba" or dtype != torch.float32 or not kernels.HAVE_NUMBA or algorithm == "unfold":
        return False
    if algorithm == "direct":
        return True
    run = batch * (out_width if geometry.stride[1] == 1 else 1)
    return run >= DIRECT_MIN_RUN


def batch_chunks(batch: int, sample_bytes: int) -> list[tuple[int, int]]:
    """``[n0, n1)`` slices of the batch whose padded input holds at most ``CHUNK_BYTES`` (at least one sample each),
    split evenly."""
    per_chunk = max(1, min(batch, CHUNK_BYTES // max(1, sample_bytes)))
    count = -(-batch // per_chunk)
    size = -(-batch // count)
    return [(n0, min(batch, n0 + size)) for n0 in range(0, batch, size)]


class DirectConv:
    """The direct kernels on torch tensors, a batch chunk at a time: layout changes, forward and both gradients.

    ``xpads`` is the list of the chunks' padded ``(C, Hp, Wp, n)`` inputs (what the backward keeps)."""

    @staticmethod
    def chunks(x_shape, geometry) -> list[tuple[int, int]]:
        batch, channels, height, width = x_shape
        ph, pw = geometry.padding
        return batch_chunks(batch, channels * (height + 2 * ph) * (width + 2 * pw) * 4)

    @staticmethod
    def pad_input(x: torch.Tensor, geometry) -> list[torch.Tensor]:
        """``(C, H + 2ph, W + 2pw, n)`` copies of ``x``'s batch chunks (``x`` is ``(N, C, H, W)``), zero border."""
        x = x.detach().contiguous()
        _, channels, height, width = x.shape
        ph, pw = geometry.padding
        xpads = []
        for n0, n1 in DirectConv.chunks(x.shape, geometry):
            xpad = x.new_empty(channels, height + 2 * ph, width + 2 * pw, n1 - n0)
            _pad_to_chwn(x[n0:n1].numpy(), ph, pw, xpad.numpy())
            xpads.append(xpad)
        return xpads

    @staticmethod
    def forward(layout, values, bias, xpads, geometry, out_size) -> torch.Tensor:
        """The ``(N, O, OH, OW)`` output from the padded input chunks."""
        n_out = layout.shape[0]
        batch = sum(xpad.shape[3] for xpad in xpads)
        y = xpads[0].new_empty(batch, n_out, *out_size)
        bias_np = (bias.detach() if bias is not None else values.new_zeros(n_out)).numpy()
        n0 = 0
        for xpad in xpads:
            out = xpad.new_empty(n_out, *out_size, xpad.shape[3])
            _forward_direct(layout.crow.numpy(), layout.col.numpy(), values.detach().numpy(), xpad.numpy(), bias_np,
                            *geometry.kernel, *geometry.stride, *geometry.dilation, RUN_FLOATS, out.numpy())
            _from_chwn(out.numpy(), 0, 0, y[n0:n0 + xpad.shape[3]].numpy())
            n0 += xpad.shape[3]
        return y

    @staticmethod
    def backward(layout, values, grad_out, xpads, geometry, input_size, need_x: bool, need_values: bool):
        """The ``(N, C, H, W)`` input gradient (computed padded, then cropped) and the value gradient, either None
        where not needed."""
        grad_out = grad_out.contiguous()
        batch, channels, height, width = input_size
        ph, pw = geometry.padding
        gx = grad_out.new_empty(batch, channels, height, width) if need_x else None
        gv = values.new_zeros(layout.col.shape[0]) if need_values else None
        vals_t = values.detach()[layout.perm_t].numpy()
        n0 = 0
        for xpad in xpads:
            n1 = n0 + xpad.shape[3]
            chunk = grad_out[n0:n1]
            g = chunk.new_empty(chunk.shape[1], chunk.shape[2], chunk.shape[3], chunk.shape[0])
            _to_chwn(chunk.numpy(), g.numpy())
            if need_x:
                gxpad = g.new_zeros(channels, height + 2 * ph, width + 2 * pw, n1 - n0)
                _grad_input_direct(layout.crow_t.numpy(), layout.row_t.numpy(), vals_t, g.numpy(), *geometry.kernel,
                                   *geometry.stride, *geometry.dilation, RUN_FLOATS, gxpad.numpy())
                _from_chwn(gxpad.numpy(), ph, pw, gx[n0:n1].numpy())
            if need_values:
                part = g.new_empty(layout.col.shape[0])
                _grad_values_direct(layout.crow.numpy(), layout.col.numpy(), g.numpy(), xpad.numpy(), *geometry.kernel,
                                    *geometry.stride, *geometry.dilation, RUN_FLOATS, part.numpy())
                gv += part
            n0 = n1
        return gx, gv
