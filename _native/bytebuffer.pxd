# What every native kernel takes as its byte input, shared by ``cimport`` (inline: no
# module of its own is built). The pure-Python twins (streamd/kernels/_*_py.py) accept
# and refuse the same buffers with the same exceptions and messages; keep them in step.


cdef inline const unsigned char[::1] byte_view(object buf):
    """``buf`` as a flat view of unsigned bytes, or TypeError / ValueError as the twins raise."""
    cdef const unsigned char[::1] data
    if buf is None:
        # A typed memoryview takes None as a null view; the twins reject it.
        raise TypeError("a bytes-like object is required, not 'NoneType'")
    try:
        data = buf
    except (ValueError, BufferError):
        # Not a C-contiguous 1-D unsigned-byte buffer (array('i'), 2-D, strided...).
        # Reading it as raw bytes is only meaningful if it is one contiguous block.
        view = memoryview(buf)
        if not view.c_contiguous:
            raise ValueError("a C-contiguous buffer is required") from None
        # cast() rejects shapes containing 0, and such a buffer has no bytes anyway.
        data = view.cast("B") if view.nbytes else b""
    return data
