# Post-training quantization on the device: a float32 Sequential becomes an int8 one (ready
# for int8 fine-tuning), calibrated on a few samples; dequantize() goes back.
#
# Weight rule (the same as the C engine's mt_quantize_weights_s8 and the host's
# mcutrain.reference.quantized.quantize_weights, bit for bit): per output channel o,
#   scale[o] = float32(max|w[o]| / 127)          (1.0 for an all-zero channel)
#   q[o, k]  = clamp(round_half_even(float32(w[o, k] / scale[o])), -127, 127)
# with each division rounded once to float32 (round to nearest, ties to even). The emulated
# boards' MicroPython floats keep only 30 bits, so the rule is computed here on the float32
# bit patterns with integers, never with Python floats. Biases stay float32 (copied).
# dequantize: w = float32(scale[o] * q[o, k]), the same integer way.
#
# Activation ranges: every int8 Linear/Conv gets quant_range = (min, max) of the float
# model's output of that layer over the calibration samples, a Convert(int8) that of its
# input. The float model runs as in inference, where a ReLU right after a layer runs in place
# on its output: such a layer's range is the ReLU's, [0, max] (what the int8 output has to
# represent for the ReLU). The host quantizer (mcutrain.quantize) measures before the ReLU.
import gc

import uctypes

_PASS = ("ReLU", "ReLU6", "MaxPool2d", "GlobalAvgPool", "Flatten")  # int8 in, int8 out
_QUANT = ("Linear", "Conv2d", "Conv1d")
_int8_avgpool = None


def int8_avgpool():
    """Whether this firmware's AvgPool2d takes int8 input (tried once on a 1x1 map)."""
    global _int8_avgpool
    if _int8_avgpool is None:
        import mcutrain as mt

        try:
            m = mt.Sequential(mt.Convert(mt.int8), mt.AvgPool2d(1), mt.Convert(mt.float32))
            m.predict(mt.zeros((1, 1, 1, 1)))
            _int8_avgpool = True
        except (ValueError, TypeError, NotImplementedError):
            _int8_avgpool = False
    return _int8_avgpool


def _halves(t):
    # The float32 items of t as little-endian 16-bit halves: ints below 2**16 stay small
    # ints on every port (a 32-bit pattern would be a long int on the boards).
    s = uctypes.struct(uctypes.addressof(t), {"h": (uctypes.ARRAY | 0, uctypes.UINT16 | 2 * t.size)},
                       uctypes.LITTLE_ENDIAN)
    return s.h


def _parts(h, i):
    # float32 item i -> (sign, m, e) with |value| = m * 2**e, m < 2**24 (0 for zero).
    hi = h[2 * i + 1]
    b = (hi >> 7) & 0xFF
    m = ((hi & 0x7F) << 16) | h[2 * i]
    if b:
        return hi >> 15, m | 0x800000, b - 150
    return hi >> 15, m, -149


def _normal(m, e):
    # m * 2**e with 2**23 <= m < 2**24 (m > 0).
    while m < 0x800000:
        m <<= 1
        e -= 1
    while m >= 0x1000000:  # exact only for callers whose low bits are zero
        m >>= 1
        e += 1
    return m, e


def _round24(n, e, sticky):
    # The float32 nearest (ties to even) to (n + sticky tail) * 2**e, n > 0 with at least 26
    # bits when sticky: (m, e) with m < 2**24 (normal results only).
    x = 0
    while (n >> x) >= 0x1000000:
        x += 1
    if x == 0:
        return _normal(n, e)
    m = n >> x
    rem = n - (m << x)
    half = 1 << (x - 1)
    if rem > half or (rem == half and (sticky or (m & 1))):
        m += 1
        if m == 0x1000000:
            m >>= 1
            x += 1
    return m, e + x


def _div(am, ae, bm, be):
    # float32(a / b) for a, b > 0.
    am, ae = _normal(am, ae)
    bm, be = _normal(bm, be)
    q, r = divmod(am << 26, bm)
    return _round24(q, ae - be - 26, r != 0)


def _rint(m, e):
    # round_half_even(m * 2**e) for a float32 m * 2**e below 2**24.
    if e >= 0:
        return m << e
    s = -e
    if s > 25:
        return 0
    i = m >> s
    rem = m - (i << s)
    half = 1 << (s - 1)
    if rem > half or (rem == half and (i & 1)):
        i += 1
    return i


def _store(h, i, m, e):
    # float32 item i = m * 2**e (m > 0, a normal float32 from _round24/_normal).
    m, e = _normal(m, e)
    b = e + 150
    if not 0 < b < 255:
        raise ValueError("quantize: a weight scale %d * 2**%d is outside float32's normal range" % (m, e))
    h[2 * i] = m & 0xFFFF
    h[2 * i + 1] = (b << 7) | ((m >> 16) & 0x7F)


def _rows(w, q, scale):
    # Views of a layer's weights as output-channel rows: (rows, row_len, float32 weight
    # halves, scale halves, int8 memoryview).
    rows = scale.size
    return rows, w.size // rows, _halves(w), _halves(scale), memoryview(q)


def quantize_weights(w, q, scale):
    """Per-output-channel symmetric int8 weights: w (float32 Tensor, output channels first)
    into q (int8 Tensor, same shape) and scale (float32 Tensor, one per output channel), by
    the rule in this module's header."""
    rows, row_len, wh, sh, qv = _rows(w, q, scale)
    for o in range(rows):
        base = o * row_len
        thi = tlo = 0  # largest |w| as its bit pattern (the order of non-negative floats)
        for k in range(base, base + row_len):
            a = wh[2 * k + 1] & 0x7FFF
            if a >= 0x7F80:
                raise ValueError("quantize: weight row %d is not finite" % o)
            if a > thi or (a == thi and wh[2 * k] > tlo):
                thi, tlo = a, wh[2 * k]
        if thi == 0 and tlo == 0:
            _store(sh, o, 1, 0)
            for k in range(base, base + row_len):
                qv[k] = 0
            continue
        b = thi >> 7
        mm = ((thi & 0x7F) << 16) | tlo
        if b:
            mm, me = mm | 0x800000, b - 150
        else:
            me = -149
        sm, se = _div(mm, me, 127, 0)
        _store(sh, o, sm, se)
        for k in range(base, base + row_len):
            neg, m, e = _parts(wh, k)
            if m == 0:
                qv[k] = 0
                continue
            qm, qe = _div(m, e, sm, se)
            v = _rint(qm, qe)
            if v > 127:
                v = 127
            qv[k] = -v if neg else v


def dequantize_weights(q, scale, w):
    """w = float32(scale[o] * q[o, k]): the real weights of an int8 layer into a float32 Tensor."""
    rows, row_len, wh, sh, qv = _rows(w, q, scale)
    for o in range(rows):
        _, sm, se = _parts(sh, o)
        for k in range(o * row_len, (o + 1) * row_len):
            v = qv[k]
            if v == 0 or sm == 0:
                wh[2 * k] = wh[2 * k + 1] = 0
                continue
            m, e = _round24(sm * (-v if v < 0 else v), se, False)
            _store(wh, k, m, e)
            if v < 0:
                wh[2 * k + 1] |= 0x8000


def _samples(calibration, samples):
    # Float32 input Tensors from an iterable of Tensors, or from a Dataset (its first
    # `samples` records in a shuffled order; int8/float16 data converted with its scale).
    if hasattr(calibration, "shuffled") and hasattr(calibration, "sample_shape"):
        import mcutrain as mt

        ds = calibration
        xf = mt.zeros((1,) + tuple(ds.sample_shape))
        n = 0
        for item in ds.shuffled(seed=0):
            if samples is not None and n >= samples:
                return
            x = item[0]
            if x.dtype == "float32":
                yield x
            else:
                xf.copy_from(x, scale=ds.scale, zero_point=ds.zero_point)
                yield xf
            n += 1
        return
    n = 0
    for x in calibration:
        if samples is not None and n >= samples:
            return
        yield x
        n += 1


def _fold_groups(model):
    # The layers of mt.fold_batchnorm(model) without building it: for each, the index of its
    # layer in model and the indices of the BatchNorm2d layers folded into it.
    groups = []
    for i in range(len(model)):
        layer = model[i]
        if type(layer).__name__ == "BatchNorm2d" and groups and model[groups[-1][0]].weight is not None:
            groups[-1][1].append(i)
        else:
            groups.append((i, []))
    return groups


def _folded_copy(model, group):
    # A float copy of the group's layer with its BatchNorm2d layers folded in (mt.clone).
    from .clone import clone

    new = clone(model[group[0]])
    for b in group[1]:
        model[b].fold_into(new)
    return new


def _calibrate(model, groups, calibration, samples, need):
    # lo[i], hi[i]: min and max over the samples of the input of folded layer i (i = len:
    # the model's output), for the i in need (the others stay None). The unfolded model
    # runs (BatchNorm2d in inference mode computes what the folded layer does), so no
    # folded copy of the whole model has to fit in RAM beside it.
    n = len(groups)
    # the layer of model whose output is the input of folded layer i (None: the input)
    source = [None] + [(g[1] or [g[0]])[-1] for g in groups]
    lo = [None] * (n + 1)
    hi = [None] * (n + 1)
    shape = None
    count = 0
    for x in _samples(calibration, samples):
        if not hasattr(x, "shape") or x.dtype != "float32":
            raise TypeError("quantize: calibration samples must be float32 Tensors, got %r"
                            % (getattr(x, "dtype", type(x).__name__),))
        if shape is None:
            shape = tuple(x.shape)
        elif tuple(x.shape) != shape:
            raise ValueError("quantize: calibration sample %d has shape %s, the first had %s"
                             % (count, tuple(x.shape), shape))
        try:
            model.forward(x, training=False, grad=True)  # a training plan keeps every layer's output
        except (ValueError, IndexError) as e:
            raise ValueError("quantize: calibration samples of shape %s do not fit the model: %s"
                             % (shape, e))
        for i in need:
            mv = memoryview(x if source[i] is None else model[source[i]].output)
            a, b = min(mv), max(mv)
            if lo[i] is None or a < lo[i]:
                lo[i] = a
            if hi[i] is None or b > hi[i]:
                hi[i] = b
        count += 1
    if count == 0:
        raise ValueError("quantize: empty calibration set: give at least one input Tensor")
    for i in need:
        if not (lo[i] == lo[i] and hi[i] == hi[i]) or lo[i] in (float("inf"), float("-inf")) \
                or hi[i] in (float("inf"), float("-inf")):
            raise ValueError("quantize: the float model gives NaN or inf on the calibration data")
    return lo, hi


def quantize(model, calibration, dtype="int8", samples=None, keep_float=()):
    """A new Sequential: model (a float32 Sequential) with every Linear/Conv2d/Conv1d in int8
    (per-channel symmetric weights, float32 bias), a Convert(int8) in front of each int8 run
    and a Convert(float32) after it, quant_ranges set from calibration (float32 input Tensors
    of one sample each, or a Dataset; at most `samples` of them). BatchNorm2d is folded
    first (keep_float indices count the layers after folding); layers that cannot take int8 (AvgPool2d until the firmware's does, Softmax,
    BatchNorm2d, Residual, ...) and the top-level indices in keep_float stay float32.
    The result shares no layer with model (float layers are copied), and model's weights
    stay as they are; its planned buffers are released (model.release()) to make room."""
    import mcutrain as mt
    from .clone import clone

    if type(model).__name__ != "Sequential":
        raise TypeError("quantize: need a Sequential, got %s" % type(model).__name__)
    if dtype != "int8":
        raise ValueError("quantize: dtype must be 'int8', got %r" % (dtype,))
    for i in range(len(model)):
        layer = model[i]
        kind = type(layer).__name__
        if kind == "Convert" or (kind in _QUANT and layer.dtype != "float32"):
            raise ValueError("quantize: layer %d (%s) is not float32: quantize a float32 model "
                             "(dequantize it first)" % (i, kind))
    if len(model) == 0:
        raise ValueError("quantize: the model has no layers")
    try:
        model.release()  # buffers planned by earlier runs: calibration plans its own
    except ValueError:
        model = clone(model)  # part of a bigger model, which alone may run it: run a copy
    # Calibration plans the float model's training buffers in one block (about half of a
    # 256 KB heap for the KWS DS-CNN): collect first, so the garbage of the caller's setup
    # does not split the free heap (without this the int8 KWS demo ran out of memory).
    gc.collect()
    groups = _fold_groups(model)
    passthrough = _PASS + (("AvgPool2d",) if int8_avgpool() else ())
    # Ranges needed: the input of each quantized layer (read by a Convert(int8) when an int8
    # run starts there) and its output.
    need = []
    for i in range(len(groups)):
        if i not in keep_float and type(model[groups[i][0]]).__name__ in _QUANT:
            for j in (i, i + 1):
                if j not in need:
                    need.append(j)
    lo, hi = _calibrate(model, groups, calibration, samples, need)
    # Calibration planned the float model's training buffers: free them for the int8 layers
    # (on a 256 KB board both do not fit at once).
    model.release()
    gc.collect()
    layers = []
    int8 = False
    quantized = 0
    for i in range(len(groups)):
        # The layer with its BatchNorm2d folded in: a copy if there is one to fold (model
        # stays as it is), else model's own, only read.
        layer = _folded_copy(model, groups[i]) if groups[i][1] else model[groups[i][0]]
        kind = type(layer).__name__
        can = i not in keep_float and (kind in _QUANT or kind in passthrough)
        if can and kind in _QUANT:
            if not int8:
                c = mt.Convert(mt.int8)
                c.quant_range = (lo[i], hi[i])
                layers.append(c)
                int8 = True
            new = clone(layer, dtype)
            quantize_weights(layer.weight, new.weight, new.weight_scale)
            if layer.bias is not None:
                new.bias.copy_from(layer.bias)
            new.quant_range = (lo[i + 1], hi[i + 1])
            layers.append(new)
            quantized += 1
        elif can and int8:
            layers.append(clone(layer))
        else:
            if int8:
                layers.append(mt.Convert(mt.float32))
                int8 = False
            # A layer belongs to one model: the input's are copied.
            layers.append(layer if groups[i][1] else clone(layer))
    if int8:
        layers.append(mt.Convert(mt.float32))
    if quantized == 0:
        raise ValueError("quantize: the model has no Linear/Conv2d/Conv1d layer to quantize")
    return mt.Sequential(*layers)


def dequantize(model):
    """A float32 Sequential from a quantized one: int8 layers back to float32 with
    w = scale * q, Convert layers dropped, float layers copied (the result shares no layer
    with model)."""
    import mcutrain as mt
    from .clone import clone

    if type(model).__name__ != "Sequential":
        raise TypeError("dequantize: need a Sequential, got %s" % type(model).__name__)
    layers = []
    for i in range(len(model)):
        layer = model[i]
        kind = type(layer).__name__
        if kind == "Convert":
            continue
        if kind in _QUANT and layer.dtype == "int8":
            new = clone(layer, "float32")
            dequantize_weights(layer.weight, layer.weight_scale, new.weight)
            if layer.bias is not None:
                new.bias.copy_from(layer.bias)
            layers.append(new)
        elif kind in _QUANT and layer.dtype != "float32":
            raise ValueError("dequantize: layer %d (%s) is %s; only int8 and float32 are handled"
                             % (i, kind, layer.dtype))
        else:
            layers.append(clone(layer))
    return mt.Sequential(*layers)
