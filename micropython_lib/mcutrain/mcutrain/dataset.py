# .mtd datasets on the device: samples streamed from flash (or /remote) one record at a time,
# never the whole file in RAM. Byte layout: docs/formats.md; host writer: mcutrain.formats.
import binascii
import struct

MAGIC = b"MTD\0"
VERSION = 1
_HEADER = "<4sHH6I4B3Ifi6I"
_HEADER_SIZE = 80
_DTYPES = (None, "float32", "float16", "int8", "uint8", "uint16", "int32")
_ITEMSIZE = (0, 4, 2, 1, 1, 2, 4)
_BLOCK = 256  # bytes per read while checking CRCs: bounded RAM whatever the chunk size
# The shared limits of docs/formats.md ("Validation rules"), as the host reader has them.
_MAX_SIZE = (1 << 24) - 1  # a shape dim or layer size
_MAX_RECORD = 1 << 30  # bytes per record
_SCALE_MIN, _SCALE_MAX = 1e-30, 1e30  # int8 scales
_MAX_DEPTH = 32  # JSON nesting
_MAX_NUMBER = 40  # characters of a JSON number


class FormatError(ValueError):
    pass


def _fail(path, reason):
    raise FormatError("%s: %s" % (path, reason))


# Strict JSON (RFC 8259, strict UTF-8, the limits above) for the info and graph sections:
# MicroPython's json takes `[1,]` or `{"a" 1}` and overlong UTF-8, so a section is checked
# first, exactly as the host's mcutrain/formats/strict_json.py does (keep the two identical).
_WS = b" \t\n\r"
_ESCAPES = b'"\\/bfnrtu'
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"


def _utf8_len(b, i):
    # Bytes of the strict UTF-8 sequence at b[i] (a non-ASCII lead byte), 0 if malformed.
    c = b[i]
    if 0xC2 <= c <= 0xDF:
        n, lo, hi = 2, 0x80, 0xBF
    elif c == 0xE0:
        n, lo, hi = 3, 0xA0, 0xBF
    elif c == 0xED:
        n, lo, hi = 3, 0x80, 0x9F  # no UTF-16 surrogates
    elif 0xE1 <= c <= 0xEF:
        n, lo, hi = 3, 0x80, 0xBF
    elif c == 0xF0:
        n, lo, hi = 4, 0x90, 0xBF
    elif 0xF1 <= c <= 0xF3:
        n, lo, hi = 4, 0x80, 0xBF
    elif c == 0xF4:
        n, lo, hi = 4, 0x80, 0x8F  # nothing above U+10FFFF
    else:
        return 0
    if i + n > len(b) or not lo <= b[i + 1] <= hi:
        return 0
    for k in range(i + 2, i + n):
        if not 0x80 <= b[k] <= 0xBF:
            return 0
    return n


def _string_end(b, i):
    # b[i] is '"': the index after the closing quote, or -1.
    i += 1
    n = len(b)
    while i < n:
        c = b[i]
        if c == 0x22:
            return i + 1
        if c == 0x5C:
            if i + 1 >= n or b[i + 1] not in _ESCAPES:
                return -1
            if b[i + 1] == 0x75:  # \uXXXX
                if i + 6 > n:
                    return -1
                for k in range(i + 2, i + 6):
                    if b[k] not in _HEX:
                        return -1
                i += 6
            else:
                i += 2
        elif c < 0x20:
            return -1
        elif c < 0x80:
            i += 1
        else:
            step = _utf8_len(b, i)
            if step == 0:
                return -1
            i += step
    return -1


def _number_end(b, i):
    # -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? at b[i]: the index after it, or -1.
    n, start = len(b), i
    if i < n and b[i] == 0x2D:
        i += 1
    if i < n and b[i] == 0x30:
        i += 1
    elif i < n and 0x31 <= b[i] <= 0x39:
        while i < n and b[i] in _DIGITS:
            i += 1
    else:
        return -1
    if i < n and b[i] == 0x2E:
        i += 1
        if i >= n or b[i] not in _DIGITS:
            return -1
        while i < n and b[i] in _DIGITS:
            i += 1
    if i < n and b[i] in b"eE":
        i += 1
        if i < n and b[i] in b"+-":
            i += 1
        if i >= n or b[i] not in _DIGITS:
            return -1
        while i < n and b[i] in _DIGITS:
            i += 1
    if i - start > _MAX_NUMBER:
        return -1
    return i


def _json_problem(b):
    """What makes b not strict JSON within the limits (a short reason), or None if it is."""
    n = len(b)
    stack = []  # open containers: '[' or '{'
    i = 0
    want = 0  # 0: a value, 1: after a value, 2: an object key (or '}' right after '{')
    first = False  # just after '[' or '{': the container may close at once
    while True:
        while i < n and b[i] in _WS:
            i += 1
        if want == 1 and not stack:
            return None if i == n else "bytes after the JSON value at %d" % i
        if i >= n:
            return "ends early"
        c = b[i]
        if want == 0:
            if c == 0x5D and first and stack[-1] == 0x5B:
                stack.pop()
                i, want, first = i + 1, 1, False
                continue
            first = False
            if c in b"[{":
                if len(stack) >= _MAX_DEPTH:
                    return "nested more than %d deep" % _MAX_DEPTH
                stack.append(c)
                i += 1
                want, first = (0, True) if c == 0x5B else (2, True)
                continue
            if c == 0x22:
                i = _string_end(b, i)
                if i < 0:
                    return "bad string"
            elif c == 0x2D or c in _DIGITS:
                i = _number_end(b, i)
                if i < 0:
                    return "bad number"
            else:
                for word in (b"true", b"false", b"null"):
                    if b[i : i + len(word)] == word:
                        i += len(word)
                        break
                else:
                    return "unexpected byte at %d" % i
            want = 1
        elif want == 2:
            if c == 0x7D and first:
                stack.pop()
                i, want, first = i + 1, 1, False
                continue
            first = False
            if c != 0x22:
                return "expected a key at %d" % i
            i = _string_end(b, i)
            if i < 0:
                return "bad string"
            while i < n and b[i] in _WS:
                i += 1
            if i >= n or b[i] != 0x3A:
                return "expected ':' at %d" % i
            i += 1
            want = 0
        else:  # after a value inside a container
            top = stack[-1]
            if c == 0x2C:
                i += 1
                want = 0 if top == 0x5B else 2
            elif (c == 0x5D and top == 0x5B) or (c == 0x7D and top == 0x7B):
                stack.pop()
                i += 1
            else:
                return "expected ',' or a closing bracket at %d" % i


def parse_json(data, path, what):
    """A JSON object from a file section, or FormatError (strict JSON, as on the host)."""
    problem = _json_problem(data)
    if problem is not None:
        _fail(path, "%s is not valid JSON: %s" % (what, problem))
    import json

    doc = json.loads(data)
    if type(doc) is not dict:
        _fail(path, "%s is not a JSON object" % what)
    return doc


def check_info(info, num_classes, path):
    # The info section's known keys (as the host's mtd.check_info).
    names = info.get("class_names")
    if names is not None:
        ok = type(names) is list and len(names) == num_classes
        for n in names if ok else ():
            ok = ok and type(n) is str
        if not ok:
            _fail(path, "info: class_names must be %d strings" % num_classes)
    meta = info.get("meta")
    if meta is not None and type(meta) is not dict:
        _fail(path, "info: meta must be a JSON object")


def readinto_all(f, buf, nbytes):
    """f.readinto(buf) for all nbytes of buf; fewer only at the end of the file. Streams such
    as mpremote mount's /remote may fill a buffer in several parts."""
    got = f.readinto(buf) or 0
    if got == nbytes or got == 0:
        return got
    import uctypes  # a byte view of any buffer (a Tensor's is typed 'f'), without a copy

    view = uctypes.bytearray_at(uctypes.addressof(buf), nbytes)
    while got < nbytes:
        part = f.readinto(memoryview(view)[got:]) or 0
        if part == 0:
            break
        got += part
    return got


def _crc_stream(f, n, buf, crc=0):
    # CRC-32 of the next n bytes of f, read through buf; None if the file ends first.
    mv = memoryview(buf)
    while n > 0:
        part = mv if n >= len(buf) else mv[:n]
        got = readinto_all(f, part, len(part))
        if got != len(part):
            return None
        crc = binascii.crc32(part, crc)
        n -= got
    return crc


def _permutation(n, seed):
    # A seeded bijection on range(n) in O(1) memory (a stored index list would need 4n bytes,
    # too much for 60k samples on a 256 KB board): a 4-round Feistel network on the smallest
    # domain 4**half >= n, cycle-walking outputs >= n back into range (Black & Rogaway 2002).
    # All arithmetic stays below 2**30, in MicroPython's small ints: no allocation per index.
    half = 1
    while (1 << (2 * half)) < n:
        half += 1
    mask = (1 << half) - 1
    keys = []
    s = seed & 0x3FFFFFFF
    for _ in range(4):
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        keys.append((s >> 16) & 0x7FFF)

    def perm(i):
        while True:
            left, right = i >> half, i & mask
            for k in keys:
                h = ((right ^ k) * 0x2C1B) & 0x3FFFFFF
                h = ((h ^ (h >> 9)) & 0x7FFF) * 0x1D35
                left, right = right, left ^ ((h ^ (h >> 13)) & mask)
            i = (left << half) | right
            if i < n:
                return i

    return perm


class Dataset:
    """An .mtd file opened for streaming.

    ds[i] and iteration give [x, y]: x a Tensor (1, *sample_shape) in the file's dtype and
    y an int class label (or a float32 Tensor (1, k) of targets); with teacher=True,
    [x, y, t] with t the teacher logits (1, num_classes). The same list and Tensors are
    refilled for every sample, so a loop `for x, y in ds.shuffled():` allocates nothing per
    sample: copy what you want to keep.
    verify=True checks every chunk's CRC once at open (a pass over the file); the header,
    info and chunk table are always checked.
    """

    def __init__(self, path, verify=True, teacher=False):
        self.path = path
        self._f = open(path, "rb")
        try:
            self._parse()
            if teacher and not self.teacher_dtype:
                _fail(path, "teacher=True but the file has no teacher logits")
            self._teacher = teacher
            if verify:
                self.verify()
        except BaseException:
            self._f.close()
            raise
        self._item = None
        self._info = None

    def _parse(self):
        f, path = self._f, self.path
        head = f.read(_HEADER_SIZE)
        if len(head) >= 4 and head[:4] != MAGIC:
            _fail(path, "not an .mtd dataset: magic %r, expected %r" % (head[:4], MAGIC))
        if len(head) < _HEADER_SIZE:
            _fail(path, "truncated: header needs %d bytes, file has %d" % (_HEADER_SIZE, len(head)))
        h = struct.unpack(_HEADER, head)
        if h[1] != VERSION:
            _fail(path, "unsupported .mtd version %d (this reader reads %d)" % (h[1], VERSION))
        if binascii.crc32(memoryview(head)[: _HEADER_SIZE - 4]) != h[23]:
            _fail(path, "header CRC mismatch: the header is corrupted")
        if h[2] != _HEADER_SIZE:
            _fail(path, "header size %d, expected %d" % (h[2], _HEADER_SIZE))
        (self.count, self.record_size, self.chunk_records, self._data_offset, info_size,
         info_crc) = h[3:9]
        x_code, ndim, label_code, teacher_code = h[9:13]
        self.scale, self.zero_point, self.num_classes, self.label_size = h[16:20]
        chunk_count, table_offset, table_crc = h[20:23]
        if not (1 <= x_code <= 6 and 1 <= ndim <= 3 and 1 <= label_code <= 6
                and teacher_code <= 6):
            _fail(path, "inconsistent header: dtype codes %d/%d/%d, ndim %d"
                  % (x_code, label_code, teacher_code, ndim))
        self._check_fields(h, x_code, ndim, label_code, teacher_code)
        self._chunk_count, self._table_offset = chunk_count, table_offset
        end = self._data_offset + self.count * self.record_size
        have = f.seek(0, 2)
        if have < end:
            _fail(path, "truncated: %d records need %d bytes, file has %d"
                  % (self.count, end, have))
        if have > end:
            _fail(path, "%d unexpected bytes after the records" % (have - end))
        buf = bytearray(_BLOCK)
        f.seek(_HEADER_SIZE)
        if _crc_stream(f, info_size, buf) != info_crc:
            _fail(path, "info section CRC mismatch: class names/meta corrupted")
        self._info_size = info_size
        f.seek(table_offset)
        if _crc_stream(f, 4 * chunk_count, buf) != table_crc:
            _fail(path, "chunk CRC table is corrupted (its CRC does not match)")
        if info_size:  # checked now, parsed again when asked for (RAM is scarce)
            f.seek(_HEADER_SIZE)
            check_info(parse_json(f.read(info_size), path, "info section"), self.num_classes,
                       path)
        # Preallocated for the hot loop: the label bytes of one record (no bytearray(0): the
        # MicroPython core trips UBSan on it).
        self._lbuf = bytearray(self._label_bytes) if self.label_dtype != "float32" else None

    def _check_fields(self, h, x_code, ndim, label_code, teacher_code):
        # The header's fields agree with each other (docs/formats.md, as the host checks them).
        path, problems = self.path, []
        self.sample_shape = h[13 : 13 + ndim]
        self.dtype = _DTYPES[x_code]
        self.label_dtype = _DTYPES[label_code]
        self.teacher_dtype = _DTYPES[teacher_code]
        if x_code > 3:
            problems.append("sample dtype %s not allowed" % self.dtype)
        if label_code == 1:
            if self.num_classes != 0 or teacher_code:
                problems.append("float targets need num_classes 0 and no teacher logits")
        elif label_code < 4 or self.label_size != 1:
            problems.append("labels must be one class index or float32 targets")
        if teacher_code > 2:
            problems.append("teacher dtype %s not allowed" % self.teacher_dtype)
        size = 1
        for d in self.sample_shape:
            size *= d
        bad_shape = (size < 1 or self.label_size < 1 or max(self.sample_shape) > _MAX_SIZE)
        for d in h[13 + ndim : 16]:
            bad_shape = bad_shape or d != 0
        self._sample_bytes = size * _ITEMSIZE[x_code]
        self._label_bytes = self.label_size * _ITEMSIZE[label_code]
        self._teacher_bytes = self.num_classes * _ITEMSIZE[teacher_code]
        if bad_shape:
            problems.append("sample shape %r or label size %d" % (h[13:16], self.label_size))
        elif not problems and (self.record_size % 4 or self.record_size > _MAX_RECORD
                               or self.record_size < self._sample_bytes + self._label_bytes
                               + self._teacher_bytes):
            problems.append("record size %d is not a multiple of 4 holding its fields"
                            % self.record_size)
        if x_code == 3 and not (_SCALE_MIN <= self.scale <= _SCALE_MAX
                                and -128 <= self.zero_point <= 127):
            problems.append("int8 scale / zero point out of range")
        chunk_records, chunk_count, table_offset = self.chunk_records, h[20], h[21]
        if chunk_records < 1 or chunk_count != (self.count + chunk_records - 1) // chunk_records:
            problems.append("%d chunks of %d do not hold %d records"
                            % (chunk_count, chunk_records, self.count))
        if (table_offset < _HEADER_SIZE + h[7]
                or self._data_offset < table_offset + 4 * chunk_count):
            problems.append("sections overlap")
        if problems:
            _fail(path, "inconsistent header: " + "; ".join(problems))

    def verify(self):
        """Check every chunk of records against its CRC (FormatError names the first bad one)."""
        f, buf, entry = self._f, bytearray(_BLOCK), bytearray(4)
        chunk_bytes = self.chunk_records * self.record_size
        for k in range(self._chunk_count):
            f.seek(self._table_offset + 4 * k)
            f.readinto(entry)
            first = k * self.chunk_records
            n = min(self.chunk_records, self.count - first)
            f.seek(self._data_offset + k * chunk_bytes)
            if _crc_stream(f, n * self.record_size, buf) != struct.unpack("<I", entry)[0]:
                _fail(self.path, "CRC mismatch in chunk %d (records %d..%d)"
                      % (k, first, first + n - 1))

    # -- what the file says
    def __len__(self):
        return self.count

    def _load_info(self):
        if self._info is None:
            import json

            f = self._f
            f.seek(_HEADER_SIZE)
            text = f.read(self._info_size)
            self._info = json.loads(text) if text else {}  # checked at open
        return self._info

    @property
    def class_names(self):
        return self._load_info().get("class_names")

    @property
    def meta(self):
        return self._load_info().get("meta") or {}

    # -- reading samples
    def _index(self, i):
        n = self.count
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("sample %d out of range for %d samples" % (i, n))
        return i

    def readinto(self, i, x, y=None, t=None):
        """Read sample i into buffer x (exactly the sample's bytes: a Tensor, array or
        bytearray), its float targets into y and its teacher logits into t if given; returns
        the class label (an int), or y for float targets. Checks the buffers' sizes (by
        copying them once), so hot loops use ds[i], iteration or batches() instead."""
        for buf, want, what in ((x, self._sample_bytes, "x"), (y, self._label_bytes, "y"),
                                (t, self._teacher_bytes, "t")):
            if buf is not None and len(bytes(buf)) != want:
                raise ValueError("%s: the %s buffer must be %d bytes" % (self.path, what, want))
        return self._read(self._index(i), x, y, t)

    def _read(self, i, x, y, t):
        # The hot path: one seek and two or three readinto calls, no allocation for uint8/uint16
        # labels (int32 labels unpack a tuple).
        f = self._f
        f.seek(self._data_offset + i * self.record_size)
        if readinto_all(f, x, self._sample_bytes) != self._sample_bytes:
            _fail(self.path, "truncated at sample %d" % i)
        lb = self._lbuf
        if self.label_dtype == "float32":
            if y is None:
                f.seek(self._label_bytes, 1)
            elif readinto_all(f, y, self._label_bytes) != self._label_bytes:
                _fail(self.path, "truncated at sample %d" % i)
            label = y
        else:
            if readinto_all(f, lb, len(lb)) != len(lb):
                _fail(self.path, "truncated at sample %d" % i)
            if self.label_dtype == "uint8":
                label = lb[0]
            elif self.label_dtype == "uint16":
                label = lb[0] | lb[1] << 8
            else:
                label = struct.unpack_from("<i", lb)[0]
        if t is not None and readinto_all(f, t, self._teacher_bytes) != self._teacher_bytes:
            _fail(self.path, "truncated at sample %d" % i)
        return label

    def _tensor(self, shape, dtype):
        import mcutrain as mt

        x = mt.zeros(shape, dtype)
        if dtype == "int8":
            x.scale = self.scale
            x.zero_point = self.zero_point
        return x

    def _buffers(self):
        # The Tensors for x, float targets and teacher logits, and the [x, y(, t)] list that
        # carries them, allocated on first use and refilled for every sample.
        if self._item is None:
            x = self._tensor((1,) + tuple(self.sample_shape), self.dtype)
            self._y = None
            if self.label_dtype == "float32":
                self._y = self._tensor((1, self.label_size), "float32")
            self._t = None
            self._item = [x, self._y]
            if self._teacher:
                self._t = self._tensor((1, self.num_classes), self.teacher_dtype)
                self._item.append(self._t)
        return self._item

    def __getitem__(self, i):
        i = self._index(i)
        item = self._buffers()
        item[1] = self._read(i, item[0], self._y, self._t)
        return item

    def __iter__(self):
        for i in range(self.count):
            yield self[i]

    def shuffled(self, seed=None):
        """Every sample once, in a random order (a new one per call unless seed is given)."""
        if seed is None:
            import random

            seed = random.getrandbits(30)
        perm = _permutation(self.count, seed)
        for k in range(self.count):
            yield self[perm(k)]

    def batches(self, n, shuffle=False, seed=None, drop_last=False):
        """[x, y(, t)] batches of n samples: x a Tensor (n, *sample_shape), y an array('i') of
        labels (or a Tensor (n, k) of float targets). Reuses the same list and buffers for every
        batch; the last, shorter batch (unless drop_last) is a view of their first rows."""
        from array import array

        if n < 1:
            raise ValueError("batch size must be >= 1")
        if not self.count:
            return  # nothing to read: allocate no buffers for a record size it never uses
        floats = self.label_dtype == "float32"
        xb = self._tensor((n,) + tuple(self.sample_shape), self.dtype)
        yb = self._tensor((n, self.label_size), "float32") if floats else array("i", range(n))
        tb = self._tensor((n, self.num_classes), self.teacher_dtype) if self._teacher else None
        xr = [xb[j] for j in range(n)]  # zero-copy row views, made once
        yr = [yb[j] for j in range(n)] if floats else None
        tr = [tb[j] for j in range(n)] if self._teacher else None
        if shuffle and seed is None:
            import random

            seed = random.getrandbits(30)
        perm = _permutation(self.count, seed) if shuffle else None
        item = [xb, yb, tb] if self._teacher else [xb, yb]
        j = 0
        for k in range(self.count):
            label = self._read(perm(k) if perm else k, xr[j], yr[j] if floats else None,
                               tr[j] if tr else None)
            if not floats:
                yb[j] = label
            j += 1
            if j == n:
                j = 0
                yield item
        if j and not drop_last:
            item[0] = self._view(xb, j)
            item[1] = self._view(yb, j) if floats else yb[:j]
            if tb:
                item[2] = self._view(tb, j)
            yield item

    def _view(self, t, rows):
        import mcutrain as mt

        shape = (rows,) + tuple(t.shape[1:])
        size = 1
        for d in shape:
            size *= d
        v = mt.frombuffer(memoryview(t)[:size], shape, t.dtype)
        if t.dtype == "int8":
            v.scale, v.zero_point = t.scale, t.zero_point
        return v

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
