"""Residual add + RMSNorm fused into one Triton kernel each way (model.py's norm_backend='triton').

`add_rms_norm(x, y, gain, dtype)` returns (x + y, RMSNorm(x + y) * gain): the residual stream after
a sublayer and the next sublayer's normalized input, the same values as model.py's _residual_add
followed by rms_norm. In XLA that pair is several passes over the B x T x D stream (the add, the
sum of squares, the scaling; the backward three or four more); here the forward reads x and y
once and writes the sum and the normalized copy, and the backward reads the two cotangents and
the saved sum once and writes the one gradient that x and y share (twice only when their dtypes
differ), on a persistent grid that sums the gain gradient in registers. docs/model.md has the
measurements.

`forward` and `backward` are the two halves for callers with their own custom VJP: fp8_mlp.py's
fused sublayer, which also has them write an e4m3 copy of a result (the add_norm_*_fp8_kernel
entry points) and read a dot's unscaled output with its row scale.

triton and jax_triton are imported when a kernel is launched, so this module imports anywhere.
"""
import functools

import jax
import jax.numpy as jnp

import errors

NORM_EPS = 1e-5   # model.NORM_EPS (not imported: model imports this module)
MAX_ROWS = 8      # rows per program at D <= 512 (the speedrun's shape, measured)
TILE = 4096       # values per tensor per program: wider rows get fewer rows (registers, not DRAM, bound it)
FWD_WARPS = 4
# The backward's persistent grid: BWD_ROWS rows a loop step, BWD_PROGRAMS_PER_SM programs per
# multiprocessor; the best of the 15 swept on the H200 (bench/dev_memory_kernels.py).
BWD_ROWS, BWD_WARPS, BWD_PROGRAMS_PER_SM = 8, 4, 2


def _triton():
  return errors.triton_kernels("norm_kernel_triton", "norm_backend")


def _consts(D):
  block_d = 1 << max(0, D - 1).bit_length()
  return dict(D=D, BLOCK_D=block_d, ROWS=max(1, min(MAX_ROWS, TILE // block_d)))


def forward(x_BTD, y_BTD, gain_D, dtype, fp8_qmul=None, fp8_rows=True, y_scale=None, write_h=True):
  """(x + y, RMSNorm(x + y) * gain in dtype, rstd [N], fp8) where fp8 is None, or with fp8_qmul (a
  1-element fp32 array) that output also in e4m3 with its scale per row times fp8_qmul:
  (h8 [N, D], hs [N]); with fp8_rows=False, (e4m3(h * fp8_qmul) [N, D], None). y_scale [N]
  multiplies y's rows first: y is then an FP8 dot's unscaled output. y_BTD None: no add (the first
  layer's norm), and the first item is x itself, not a copy. write_h=False (with fp8_qmul): the
  second item is None and the B x T x D normalized copy is not written, for a caller that needs
  only the e4m3 one (swiglu_kernel.transpose_fp8's norm= remakes h where it is needed again)."""
  jt, kern = _triton()
  D = x_BTD.shape[-1]
  N = x_BTD.size // D
  consts = _consts(D)
  has_y = y_BTD is not None
  assert has_y or y_scale is None, "y_scale scales y, and there is no y"
  assert write_h or fp8_qmul is not None, "write_h=False leaves only the e4m3 copy: give fp8_qmul"
  # Without y, Y and XOUT are 1-element dummies the kernel never touches.
  ins = (x_BTD.reshape(N, D), y_BTD.reshape(N, D) if has_y else jnp.zeros((1,), x_BTD.dtype), gain_D)
  outs = (jax.ShapeDtypeStruct((N, D) if has_y else (1,), x_BTD.dtype),
          jax.ShapeDtypeStruct((N, D) if write_h else (1,), dtype),
          jax.ShapeDtypeStruct((N,), jnp.float32))
  launch = dict(grid=(-(-N // consts["ROWS"]),), num_warps=FWD_WARPS, num_stages=1, N=N, EPS=NORM_EPS, **consts)
  if fp8_qmul is None and y_scale is not None:
    (x_out, h, rstd), fp8 = jt.triton_call(*ins, y_scale, kernel=kern.add_norm_fwd_scaled_kernel, out_shape=outs,
                                           **launch), None
  elif fp8_qmul is None:
    (x_out, h, rstd), fp8 = jt.triton_call(*ins, kernel=kern.add_norm_fwd_kernel, out_shape=outs, HAS_Y=has_y,
                                           **launch), None
  else:
    x_out, h, rstd, *fp8 = jt.triton_call(
        *ins, fp8_qmul, jnp.ones((1,), jnp.float32) if y_scale is None else y_scale,   # a dummy YS when unused
        kernel=kern.add_norm_fwd_fp8_kernel,
        out_shape=(*outs, jax.ShapeDtypeStruct((N, D), jnp.float8_e4m3fn),
                   jax.ShapeDtypeStruct((N,) if fp8_rows else (1,), jnp.float32)),
        ROW_SCALE=bool(fp8_rows), Y_SCALED=y_scale is not None, HAS_Y=has_y, WRITE_H=bool(write_h), **launch)
    if not fp8_rows:
      fp8 = (fp8[0], None)
  return (x_out.reshape(x_BTD.shape) if has_y else x_BTD, h.reshape(x_BTD.shape) if write_h else None, rstd,
          fp8)


def forward_parallel(x_BTD, z_BTD, y_BTD, y_scale, gain_D, dtype, q_static=None, q_rows=None, write_h=True):
  """The parallel block's add + norm: (x + z + y * y_scale[row] in x's dtype, h = RMSNorm(that) *
  gain in dtype, rstd [N], e4m3(h * q_static) or None, (h in e4m3 with its scale per row times
  q_rows, those scales [N]) or None). z is the attention's output, y the MLP's unscaled FP8 dot
  output; q_static and q_rows are 1-element fp32 arrays (the next attention's and the next MLP's).
  z, y and y_scale None: no add (the first layer's norm), and the first item is x itself.
  write_h=False: h is None, not written (its e4m3 copies are; a reader of h remakes it from the
  stream and rstd, as swiglu_kernel.transpose_fp8's norm= does)."""
  jt, kern = _triton()
  D = x_BTD.shape[-1]
  N = x_BTD.size // D
  consts = _consts(D)
  one = jnp.ones((1,), jnp.float32)
  has_y = y_BTD is not None
  f8 = lambda on, shape: jax.ShapeDtypeStruct(shape if on else (1,), jnp.float8_e4m3fn)   # pylint: disable=unnecessary-lambda-assignment
  # Z and Y of the no-add form: 1-element dummies, never touched.
  z, y = (z_BTD.reshape(N, D), y_BTD.reshape(N, D)) if has_y else (jnp.zeros((1,), x_BTD.dtype),) * 2
  x_out, h, rstd, h8, h8r, hsr = jt.triton_call(
      x_BTD.reshape(N, D), z, y, gain_D,
      y_scale if has_y else one, one if q_static is None else q_static, one if q_rows is None else q_rows,
      kernel=kern.add_norm_fwd_par_kernel,
      out_shape=(jax.ShapeDtypeStruct((N, D) if has_y else (1,), x_BTD.dtype),
                 jax.ShapeDtypeStruct((N, D) if write_h else (1,), dtype),
                 jax.ShapeDtypeStruct((N,), jnp.float32), f8(q_static is not None, (N, D)),
                 f8(q_rows is not None, (N, D)), jax.ShapeDtypeStruct((N,) if q_rows is not None else (1,), jnp.float32)),
      grid=(-(-N // consts["ROWS"]),), num_warps=FWD_WARPS, num_stages=1, N=N, EPS=NORM_EPS,
      STATIC8=q_static is not None, ROW8=q_rows is not None, HAS_Y=has_y, WRITE_H=bool(write_h), **consts)
  shape = x_BTD.shape
  return (x_out.reshape(shape) if has_y else x_BTD, h.reshape(shape) if write_h else None, rstd,
          None if q_static is None else h8.reshape(shape), None if q_rows is None else (h8r, hsr))


def _fwd(x_BTD, y_BTD, gain_D, dtype):
  x_out, h, rstd, _ = forward(x_BTD, y_BTD, gain_D, dtype)
  return (x_out, h), (x_out, rstd, gain_D, jnp.zeros((0,), y_BTD.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def add_rms_norm(x_BTD, y_BTD, gain_D, dtype):
  """(x + y in x's dtype, RMSNorm(x + y) * gain in `dtype`), eps 1e-5, statistics in fp32."""
  return _fwd(x_BTD, y_BTD, gain_D, dtype)[0]


def rms_norm_first(x_BTD, gain_D, dtype, fp8_qmul=None, dh_mul=1.0, q_rows=None, write_h=True):
  """The first layer's norm, which no residual add precedes: (x, h = RMSNorm(x) * gain in `dtype`,
  h8) with h8 = e4m3(h * fp8_qmul) (fp8_qmul from fp8_mlp.static_scale; None: no e4m3 copy, h8
  None). h8 carries no gradient. x comes back unchanged as the residual stream, so that the
  backward receives the stream's cotangent too and writes x's one gradient (the stream's plus the
  norm's) in one pass, where XLA ran the norm's forward and backward as five reductions and fused
  its gradient into the embedding's scatter. dh_mul (a Python float): h's cotangent arrives that
  many times too small (1.0: as it should; see backward). q_rows (the parallel block's first MLP,
  its W13 scale): four more items, the MLP's hand-off (see parallel_handoff); write_h=False (with
  q_rows): h is not written and comes out as zeros, for readers that take only its gradient."""
  return _first(x_BTD, gain_D, fp8_qmul, q_rows, dtype, float(dh_mul), bool(write_h))


def parallel_handoff(h, rstd, rows):
  """What a norm hands the parallel block's next MLP (fp8_mlp.parallel_sublayer): (h_mlp, h8r, hs,
  rstd), h_mlp = h again (zeros when h was not written: the MLP remakes h from the stream and
  rstd), whose cotangent comes back as the MLP's unscaled share of h's gradient, with hs's as its
  row scales (the norm's backward adds it in: backward's dh2); rows = (h8r, hs) from forward_parallel."""
  return (h, *rows, rstd)


def _h_or_zeros(h, shape, dtype):
  """h, or for a norm that did not write it, zeros its readers take only the shape of (XLA writes none)."""
  return jnp.zeros(shape, dtype) if h is None else h


def _first_fwd(x_BTD, gain_D, fp8_qmul, q_rows, dtype, dh_mul=1.0, write_h=True):  # pylint: disable=unused-argument
  if q_rows is None:
    _, h, rstd, fp8 = forward(x_BTD, None, gain_D, dtype, fp8_qmul=fp8_qmul, fp8_rows=False)
    outs = (x_BTD, h, None if fp8 is None else fp8[0].reshape(x_BTD.shape))
  else:
    _, h, rstd, h8, rows = forward_parallel(x_BTD, None, None, None, gain_D, dtype, fp8_qmul, q_rows, write_h)
    h = _h_or_zeros(h, x_BTD.shape, dtype)
    outs = (x_BTD, h, h8, *parallel_handoff(h, rstd, rows))
  return outs, (x_BTD, rstd, gain_D, fp8_qmul, q_rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _first(x_BTD, gain_D, fp8_qmul, q_rows, dtype, dh_mul, write_h):
  return _first_fwd(x_BTD, gain_D, fp8_qmul, q_rows, dtype, dh_mul, write_h)[0]


def _handoff_dh2(cotangents):
  """backward's dh2 from the cotangents of parallel_handoff's items (h_mlp, h8r, hs, rstd)."""
  return cotangents[0], cotangents[2]


def _zeros_or_none(a):
  return None if a is None else jnp.zeros_like(a)


def _first_bwd(dtype, dh_mul, write_h, res, cotangents):  # pylint: disable=unused-argument
  x_BTD, rstd, gain_D, fp8_qmul, q_rows = res
  dx_out, dh = cotangents[:2]   # h8's cotangent is dropped: the e4m3 copy is a constant to autodiff
  dh2 = None if q_rows is None else _handoff_dh2(cotangents[3:])
  dx, _, dgain = backward(dx_out, dh, x_BTD, rstd, gain_D, x_BTD.dtype, dh_mul=dh_mul, dh2=dh2)
  return dx, dgain, _zeros_or_none(fp8_qmul), _zeros_or_none(q_rows)


_first.defvjp(_first_fwd, _first_bwd)


# The lookup inside the first norm's kernel (embed_norm_fwd_kernel: no gather pass writing the stream
# for the norm to read back). Off: no gain in the thirty-eighth and thirty-ninth sessions' timings (it
# ran beside the weights' casts); False: XLA gathers the rows inside embed_rms_norm_first.
EMBED_IN_FIRST_NORM = False
# model.py hands the first norm the table and the tokens, and with a tied head the head's weight
# copy comes out of it too, so the norm's backward kernel adds each row's gradient straight into the
# table's (the head's share already in it: embed_norm_bwd_kernel), where XLA wrote the stream's
# gradient and scattered it into the table's: passes at the very end of the backward, which AdamW
# waits on (the 33.5 MB gradient written and read back, and a 39 us scatter on the H100). Five
# interleaved rounds on an H200: 7.400 vs 7.452 ms a step, at the noise (docs/model.md,
# "Thirty-ninth session"). False: XLA's gather, rms_norm_first, and those passes.
EMBED_GRAD_IN_FIRST_NORM = True


def embed_rms_norm_first(table_VD, tokens_BT, gain_D, stream_dtype, dtype, fp8_qmul=None, head_dtype=None,
                         dh_mul=1.0, q_rows=None, write_h=True):
  """rms_norm_first(table[tokens] in stream_dtype, gain, dtype, fp8_qmul) as one op that owns the
  lookup: (x, h, h8), x the residual stream [B, T, D]; with head_dtype a fourth item, the table in
  head_dtype (a tied head's weight), whose cotangent joins the table's gradient in the backward.
  The lookup runs inside the norm's kernel with EMBED_IN_FIRST_NORM, else as XLA's gather. The
  backward gives the table the gradient the gather (and the cast) would: the norm's one backward
  pass, each row's gradient rounded to stream_dtype and summed into the table's row in fp32, plus
  the head's cotangent in fp32; with EMBED_GRAD_IN_FIRST_NORM all in the norm's backward kernel,
  else in XLA. The tokens get no gradient. dh_mul, q_rows and write_h as in rms_norm_first (with
  q_rows the lookup is XLA's: the parallel norm's kernel does the rest); parallel_handoff's four
  items come last."""
  return _embed_first(table_VD, tokens_BT, gain_D, fp8_qmul, q_rows, stream_dtype, dtype, head_dtype, float(dh_mul),
                      bool(write_h))


def _embed_first_fwd(table_VD, tokens_BT, gain_D, fp8_qmul, q_rows, stream_dtype, dtype, head_dtype, dh_mul=1.0,  # pylint: disable=unused-argument
                     write_h=True):
  D = table_VD.shape[-1]
  N = tokens_BT.size
  fp8 = fp8_qmul is not None
  shape = (*tokens_BT.shape, D)
  handoff = ()
  if q_rows is not None:
    x = table_VD[tokens_BT].astype(stream_dtype)
    _, h, rstd, h8, rows = forward_parallel(x, None, None, None, gain_D, dtype, fp8_qmul, q_rows, write_h)
    h = _h_or_zeros(h, shape, dtype)
    handoff = parallel_handoff(h, rstd, rows)
  elif EMBED_IN_FIRST_NORM:
    jt, kern = _triton()
    consts = _consts(D)
    x, h, rstd, h8 = jt.triton_call(
        table_VD, tokens_BT.reshape(N).astype(jnp.int32), gain_D,
        fp8_qmul if fp8 else jnp.ones((1,), jnp.float32), kernel=kern.embed_norm_fwd_kernel,
        out_shape=(jax.ShapeDtypeStruct((N, D), stream_dtype), jax.ShapeDtypeStruct((N, D), dtype),
                   jax.ShapeDtypeStruct((N,), jnp.float32),
                   jax.ShapeDtypeStruct((N, D) if fp8 else (1,), jnp.float8_e4m3fn)),
        grid=(-(-N // consts["ROWS"]),), num_warps=FWD_WARPS, num_stages=1, N=N, EPS=NORM_EPS, FP8=fp8, **consts)
    x, h, h8 = x.reshape(shape), h.reshape(shape), h8.reshape(shape) if fp8 else None
  else:
    x = table_VD[tokens_BT].astype(stream_dtype)
    _, h, rstd, h8 = forward(x, None, gain_D, dtype, fp8_qmul=fp8_qmul, fp8_rows=False)
    h8 = None if h8 is None else h8[0].reshape(shape)
  outs = (x, h, h8) + (() if head_dtype is None else (table_VD.astype(head_dtype),)) + handoff
  # table_like: a [V, 0] array, so the backward knows the table's rows and dtype without keeping it.
  return outs, (x, rstd, gain_D, fp8_qmul, q_rows, tokens_BT, jnp.zeros((table_VD.shape[0], 0), table_VD.dtype))


def _embed_first_bwd(stream_dtype, dtype, head_dtype, dh_mul, write_h, res, cotangents):  # pylint: disable=unused-argument
  x_BTD, rstd, gain_D, fp8_qmul, q_rows, tokens_BT, table_like = res
  dx_out, dh = cotangents[:2]   # h8's cotangent is dropped, as in _first_bwd
  D = x_BTD.shape[-1]
  V, tdtype = table_like.shape[0], table_like.dtype
  base = jnp.zeros((V, D), tdtype) if head_dtype is None else cotangents[3].astype(tdtype)
  dh2 = None if q_rows is None else _handoff_dh2(cotangents[-4:])
  if EMBED_GRAD_IN_FIRST_NORM:
    d_table, dgain = _embed_backward(dx_out, dh, x_BTD, rstd, gain_D, tokens_BT, base, dh_mul, dh2)
  else:
    dx, _, dgain = backward(dx_out, dh, x_BTD, rstd, gain_D, x_BTD.dtype, dh_mul=dh_mul, dh2=dh2)
    d_table = base.at[tokens_BT.reshape(-1)].add(dx.reshape(-1, D).astype(tdtype))
  return d_table, None, dgain, _zeros_or_none(fp8_qmul), _zeros_or_none(q_rows)


def _embed_backward(dx_out, dh, x_out, rstd, gain_D, tokens_BT, base_VD, dh_mul=1.0, dh2=None):
  """(base + the lookup's gradient of the table, dgain) from embed_norm_bwd_kernel (fp32 table); dh2
  as in backward."""
  jt, kern = _triton()
  D, N, consts, programs = _bwd_grid(x_out)
  d_table, dg_part = jt.triton_call(
      dx_out.reshape(N, D), dh.reshape(N, D), x_out.reshape(N, D), rstd, gain_D,
      tokens_BT.reshape(N).astype(jnp.int32), base_VD.astype(jnp.float32), *_dh2_args(dh2, N, D),
      kernel=kern.embed_norm_bwd_kernel,
      out_shape=(jax.ShapeDtypeStruct(base_VD.shape, jnp.float32), jax.ShapeDtypeStruct((programs, D), jnp.float32)),
      input_output_aliases={6: 0}, grid=(programs,), num_warps=BWD_WARPS, num_stages=1, N=N, PROGRAMS=programs,
      DH_MUL=float(dh_mul), HAS_DH2=dh2 is not None, **consts)
  return d_table.astype(base_VD.dtype), jnp.sum(dg_part, 0).astype(gain_D.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _embed_first(table_VD, tokens_BT, gain_D, fp8_qmul, q_rows, stream_dtype, dtype, head_dtype, dh_mul, write_h):
  return _embed_first_fwd(table_VD, tokens_BT, gain_D, fp8_qmul, q_rows, stream_dtype, dtype, head_dtype, dh_mul,
                          write_h)[0]


_embed_first.defvjp(_embed_first_fwd, _embed_first_bwd)


def _bwd_grid(x_out):
  """(D, N, the kernel's block constants, programs) of the persistent backward over x_out's rows."""
  D = x_out.shape[-1]
  N = x_out.size // D
  consts = _consts(D)
  consts["ROWS"] = max(1, min(BWD_ROWS, TILE // consts["BLOCK_D"]))
  return D, N, consts, max(1, min(-(-N // consts["ROWS"]), BWD_PROGRAMS_PER_SM * _sm_count()))


def _sm_count():
  """Multiprocessors of the GPU (132 on an H100/H200 SXM): the persistent backward's grid."""
  return int(getattr(jax.devices()[0], "core_count", 0) or 132)


def backward(dx_out, dh, x_out, rstd, gain_D, y_dtype, dh_scale=None, fp8_qmul=None, dh_mul=1.0, dh2=None):
  """add_rms_norm's gradients (dx, dy, dgain) from the cotangents of (x + y, h); dx_out None for a
  zero one (the last layer's stream: no B x T x D of zeros written and read back). For fp8_mlp.py:
  dh_scale [N] multiplies dh's rows (dh is then an FP8 dot's unscaled output), and fp8_qmul adds a
  4th item, dx in e4m3 with its scale per row times fp8_qmul: (d8 [N, D], ds [N]). dh_mul (a Python
  float, a constant of the kernel) multiplies all of dh as it is read: the next attention's FP8
  backward hands dh over without its 2^-k (attention_kernel.flash_attention_qkv_fp8's dh_raw), which
  cost a pass of its own over dh on the dot's output. dh2 = (dh2 [..., D], its row scales [N]): h's
  second cotangent, an FP8 dot's unscaled output, added in after dh_mul (the parallel block's MLP
  share, beside the attention's dh: no [N, D] sum written and read back)."""
  jt, kern = _triton()
  D, N, consts, programs = _bwd_grid(x_out)
  # The residual add hands one gradient to both of its inputs: with one dtype (the bf16 stream) it
  # is written once and returned twice; DY is then a 1-element dummy the kernel never writes.
  two = x_out.dtype != y_dtype
  has_dxout = dx_out is not None
  ins = ((dx_out if has_dxout else dh).reshape(N, D), dh.reshape(N, D), x_out.reshape(N, D), rstd, gain_D)
  outs = (jax.ShapeDtypeStruct((N, D), x_out.dtype), jax.ShapeDtypeStruct((N, D) if two else (1,), y_dtype),
          jax.ShapeDtypeStruct((programs, D), jnp.float32))
  launch = dict(grid=(programs,), num_warps=BWD_WARPS, num_stages=1, N=N, PROGRAMS=programs, TWO_OUT=two,
                HAS_DXOUT=has_dxout, DH_MUL=float(dh_mul), **consts)
  if dh_scale is None and fp8_qmul is None and dh2 is None:
    (dx, dy, dg_part), fp8 = jt.triton_call(*ins, kernel=kern.add_norm_bwd_kernel, out_shape=outs, **launch), None
  else:
    ones = jnp.ones((1,), jnp.float32)
    f8 = ((N, D), (N,)) if fp8_qmul is not None else ((1,), (1,))   # 1-element dummies when unused
    dx, dy, dg_part, *fp8 = jt.triton_call(
        *ins, ones if dh_scale is None else dh_scale, ones if fp8_qmul is None else fp8_qmul, *_dh2_args(dh2, N, D),
        kernel=kern.add_norm_bwd_fp8_kernel,
        out_shape=(*outs, jax.ShapeDtypeStruct(f8[0], jnp.float8_e4m3fn), jax.ShapeDtypeStruct(f8[1], jnp.float32)),
        DH_SCALED=dh_scale is not None, FP8=fp8_qmul is not None, HAS_DH2=dh2 is not None, **launch)
  dx = dx.reshape(x_out.shape)
  grads = dx, dy.reshape(x_out.shape) if two else dx, jnp.sum(dg_part, 0).astype(gain_D.dtype)
  return (*grads, tuple(fp8)) if fp8_qmul is not None else grads


def _dh2_args(dh2, N, D):
  """The kernels' DH2, DHS2 inputs: dh2 = (dh2, its row scales) as [N, D] and [N], or 1-element dummies."""
  if dh2 is None:
    return jnp.zeros((1,), jnp.bfloat16), jnp.ones((1,), jnp.float32)
  return dh2[0].reshape(N, D), dh2[1].reshape(N).astype(jnp.float32)


def _bwd(dtype, res, cotangents):  # pylint: disable=unused-argument
  x_out, rstd, gain_D, y_like = res
  return backward(*cotangents, x_out, rstd, gain_D, y_like.dtype)


def _fwd_rule(x_BTD, y_BTD, gain_D, dtype):
  return _fwd(x_BTD, y_BTD, gain_D, dtype)


add_rms_norm.defvjp(_fwd_rule, _bwd)
