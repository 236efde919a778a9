"""Forty-second session, CPU (no GPU needed): the packed-RoPE backward kernels compiled for sm_90 by
the triton wheel's own ptxas, the tree's against HEAD's (`git show HEAD:attention_kernel_triton.py >
/tmp/oldk/attention_kernel_triton_old.py` first), at the speedrun shape (T 256, H 16, D 32, the
block configs of attention_kernel.block_config): whether the bf16 kernels' SASS is unchanged, and the
FP8 kernels' registers, spills, shared memory and instruction counts. Run from the repo root:
  python3 bench/results/h100_session42/sass_check.py
Result (triton 3.6.0): bf16 dQ and dK/dV SASS identical to HEAD (880 instructions each; 74 and 127
registers); the FP8 kernels 1048 / 1248 instructions, 78 / 116 registers, no stack, the same shared
memory (24576 / 20992 bytes)."""
import sys, importlib.util, re
sys.path.insert(0, '.')
import triton, subprocess, os, tempfile
CUOBJ = os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/cuobjdump')
def regs(c):
  f = tempfile.mktemp(suffix='.cubin'); open(f, 'wb').write(c.asm['cubin'])
  out = subprocess.run([CUOBJ, '-res-usage', f], capture_output=True, text=True).stdout
  return re.search(r'REG:(\d+)', out).group(1) + ' regs, ' + re.search(r'STACK:(\d+)', out).group(0)
def sass(c):
  f = tempfile.mktemp(suffix='.cubin'); open(f, 'wb').write(c.asm['cubin'])
  out = subprocess.run([CUOBJ, '-sass', f], capture_output=True, text=True).stdout
  return [re.sub(r'/\*[0-9a-f]{4}\*/', '', l).split(';')[0].strip() for l in out.splitlines() if re.search(r'/\*[0-9a-f]{4}\*/', l)]
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
def load(path, name):
  spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
new = load('attention_kernel_triton.py', 'akt_new')
old = load('/tmp/oldk/attention_kernel_triton_old.py', 'akt_old')
T,H,D=256,16,32
def comp(mod, name, types, consts, warps, stages):
  k = getattr(mod, name)
  arrays = [n for n in k.arg_names if n not in consts]
  sig = {n: '*' + types.get(n, 'bf16') for n in arrays}
  sig.update({n: 'constexpr' for n in consts})
  attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(arrays))}
  c = triton.compile(ASTSource(k, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
  return c
f32 = dict(LSE='fp32', DELTA='fp32', COS='fp32', SIN='fp32', G='fp32')
common = dict(T=T, H=H, D=D, SM_SCALE=D**-0.5, CAUSAL=True)
res = {}
for tag, mod in (('old', old), ('new', new)):
  a = comp(mod, 'bwd_dq_rope_kernel', f32, dict(common, BLOCK_M=64, BLOCK_N=32), 4, 4)
  b = comp(mod, 'bwd_dkdv_rope_kernel', f32, dict(common, BLOCK_M=32, BLOCK_N=64), 4, 3)
  res[tag] = (a, b)
strip = lambda p: '\n'.join(l for l in p.splitlines() if not l.strip().startswith(('.loc', '.file', '//', '$L__', '.section', '.b8', '.b32')) and 'debug' not in l)
for i, n in enumerate(('dq', 'dkdv')):
  po, pn = res['old'][i].asm['ptx'], res['new'][i].asm['ptx']
  so, sn = res['old'][i].asm['sass'] if 'sass' in res['old'][i].asm else None, None
  print(n, 'ptx identical (stripped):', strip(po) == strip(pn), 'sass identical:', sass(res['old'][i]) == sass(res['new'][i]), len(sass(res['old'][i])), len(sass(res['new'][i])), regs(res['old'][i]), '|', regs(res['new'][i]), 'shared', res['old'][i].metadata.shared, res['new'][i].metadata.shared)
  ins = lambda p: len([l for l in p.splitlines() if l.strip() and not l.strip().startswith(('.', '//', '$', '{', '}'))])
  print('   instr lines', ins(po), ins(pn))
f8 = dict(f32, DQKV='fp8e5', DQKV_T='fp8e5', DQKV_IN='fp8e5', DQKV_T_IN='fp8e5')
a = comp(new, 'bwd_dq_rope_fp8_kernel', f8, dict(common, BLOCK_M=64, BLOCK_N=32), 4, 4)
b = comp(new, 'bwd_dkdv_rope_fp8_kernel', f8, dict(common, BLOCK_M=32, BLOCK_N=64), 4, 3)
for n, c, base in (('dq fp8', a, res['new'][0]), ('dkdv fp8', b, res['new'][1])):
  print(n, regs(c), 'vs', regs(base), 'sass', len(sass(c)), 'vs', len(sass(base)), 'shared', c.metadata.shared, 'vs', base.metadata.shared)
  print('   st.global lines', c.asm['ptx'].count('st.global'), 'vs', base.asm['ptx'].count('st.global'), 'cvt e5m2', c.asm['ptx'].count('e5m2'))
