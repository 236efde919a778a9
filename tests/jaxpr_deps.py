"""Which dots an output of a traced function is computed from: for tests that pin the order in
which the backward's dots may run (an optimization_barrier ties one dot's input to another's
result, which the values alone cannot show)."""
import jax


def dots_upstream(fn, *args):
  """For each output of jax.make_jaxpr(fn)(*args), the set of dot_general equations (by id) it is
  computed from, and the equations themselves by id."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  made_by = {id(v): e for e in jaxpr.eqns for v in e.outvars}
  def upstream(var):
    seen, todo = {}, [var]
    while todo:
      e = made_by.get(id(todo.pop()))
      if e is not None and id(e) not in seen:
        seen[id(e)] = e
        todo.extend(v for v in e.invars if not hasattr(v, "val"))   # literals carry .val
    return {k for k, e in seen.items() if e.primitive.name == "dot_general"}
  return [upstream(v) for v in jaxpr.outvars], {id(e): e for e in jaxpr.eqns}
