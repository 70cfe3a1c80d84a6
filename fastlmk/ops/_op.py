"""One declaration per op, and the factory that wires it into PyTorch.

An op is declared once, in its own module, with :func:`declare`: its schema (name, inputs,
named outputs); the values its backward reads; which inputs are differentiable; and four plain
functions:

* ``forward(k, *inputs) -> output | (output, *extra)`` over a backend's kernel set ``k`` (the
  tensor-level interface of :mod:`fastlmk.ops._interface`), tensor inputs contiguous. The first
  output is the op's result; further ones (soft-argmax's stats) are only kept for the backward.
* ``backward(k, grad, *saved[, *needs]) -> grad | (grad, ...)``: the gradient of the first
  output, then the ``saved`` values in their declared order, then (for ops with two or more
  differentiable inputs) one ``need_<input>`` flag per differentiable input; returns one
  gradient per differentiable input, ``None`` where not needed.
* ``fake(*inputs)``: empty outputs of the right shapes and dtypes (for ``torch.compile``).
* ``reference(*inputs)``: the pure-PyTorch result (:mod:`fastlmk.ops.reference`).

From that, :class:`KernelOp` builds every piece of wiring:

* ``torch.ops.fastlmk.<name>`` and ``<name>_backward``: opaque ``torch.library.custom_op``
  operators with a trailing ``str backend`` argument, their fakes and the autograd
  registration -- what ``torch.compile`` graphs hold for the "cpu" and "cuda" backends;
* ``torch.ops.fastlmk.triton_<name>`` and ``triton_<name>_backward``, registered when
  :mod:`fastlmk.ops.triton` is imported (:func:`register_triton`): the same functions bound to
  the Triton kernels as ``torch.library.triton_op``, which ``torch.compile`` traces into (the
  kernels are launched through ``torch.library.wrap_triton``, so Inductor sees them). Under the
  Triton interpreter ``wrap_triton`` cannot trace a kernel, so they are opaque custom ops with
  the declared fakes instead;
* the eager fast path, a ``torch.autograd.Function`` calling the same forward and backward
  without the dispatcher: ``benchmarks/bench_overhead.py`` measured it ~24 us per call cheaper
  than the registered op;

and it owns the switch between them (:meth:`KernelOp.__call__`). The kernels' backward is not
differentiable: a double backward through the eager path raises (``once_differentiable``), and
the backward operators have no autograd formula.
"""

from __future__ import annotations

import inspect
import operator

import torch
from torch.autograd.function import once_differentiable

from fastlmk.ops import backends

_DECLARED: dict = {}  # name -> KernelOp, in declaration order


def _args(spec: str) -> list:
    """``"Tensor image, int out_h"`` -> ``[("Tensor", "image"), ("int", "out_h")]``."""
    return [tuple(arg.split()) for arg in spec.split(",") if arg.strip()]


def _names(spec: str) -> list:
    return [n.strip() for n in spec.split(",") if n.strip()]


_TYPES = {"Tensor": torch.Tensor, "float": float, "int": int, "bool": bool, "str": str}


def _signature(args: list, n_returns: int) -> inspect.Signature:
    """The Python signature of an operator with these ``(type, name)`` arguments returning
    ``n_returns`` tensors: ``torch.library`` reads the operator's schema from it."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_TYPES[t]) for t, n in args]
    returns = torch.Tensor if n_returns == 1 else tuple[(torch.Tensor,) * n_returns]
    return inspect.Signature(params, return_annotation=returns)


def _picker(indices):
    """``operator.itemgetter`` that always returns a tuple (also for one index or none)."""
    if len(indices) == 0:
        return lambda seq: ()
    if len(indices) == 1:
        (i,) = indices
        return lambda seq: (seq[i],)
    return operator.itemgetter(*indices)


def _placeholder(like: torch.Tensor) -> torch.Tensor:
    """What a backward operator returns for a gradient that was not asked for (operators cannot
    return None)."""
    return like.new_empty(0)


class KernelOp:
    """The wiring of one declared op (see the module docstring); built by :func:`declare`."""

    def __init__(self, schema, saved, differentiable, forward, backward, fake, reference):
        name, rest = schema.split("(", 1)
        inputs, outputs = rest.split(") -> ")
        self.name = name
        self.forward, self.backward, self.fake, self.reference = forward, backward, fake, reference
        args = _args(inputs)
        outs = [n for _, n in _args(outputs.strip("()"))]
        in_names = [n for _, n in args]
        types = {n: t for t, n in args} | {n: "Tensor" for n in outs}
        saved = _names(saved)
        diff = _names(differentiable)
        self._n_inputs = len(args)
        self._n_outputs = len(outs)
        self._tensor_index = tuple(i for i, (t, _) in enumerate(args) if t == "Tensor")
        self._diff_index = tuple(in_names.index(n) for n in diff)
        # where each saved value comes from: an input (index i) or an output (index n_inputs + j)
        self._save_index = tuple(in_names.index(n) if n in in_names else len(args) + outs.index(n) for n in saved)
        self._n_saved_tensors = sum(types[n] == "Tensor" for n in saved)
        assert all(types[n] == "Tensor" for n in saved[:self._n_saved_tensors]), f"{name}: saved tensors come first"
        # the gradient of a differentiable input has its shape: the input must be saved
        self._diff_saved = tuple(saved.index(n) for n in diff)
        self._with_needs = len(diff) > 1
        # per-call work reduced to C calls (operator.itemgetter): these run on every eager call
        self._saves_outputs = any(i >= len(args) for i in self._save_index)
        self._pick_tensors = _picker(self._save_index[:self._n_saved_tensors])
        self._pick_values = _picker(self._save_index[self._n_saved_tensors:])
        self._pick_needs = _picker(self._diff_index)
        # gradients (g_0, ..., g_d, None) -> one entry per forward argument, the backend included
        slot = {i: j for j, i in enumerate(self._diff_index)}
        self._scatter_grads = {n: _picker([slot.get(i, len(diff)) for i in range(n)])
                               for n in (len(args), len(args) + 1)}
        # the operators' arguments, less the trailing backend of the non-Triton ones
        needs = [("bool", f"need_{n}") for n in diff] if self._with_needs else []
        self._forward_args = (args, len(outs))
        self._backward_args = ([("Tensor", "grad")] + [(types[n], n) for n in saved] + needs, len(diff))
        self.registered = self._register(name, torch.library.custom_op, backends.kernels, [("str", "backend")])
        self.triton = None  # fastlmk::triton_<name>, set by register_triton
        self._function = self._eager_function()
        _DECLARED[name] = self

    # --- the switch ----------------------------------------------------------------------------
    def __call__(self, backend: str, *inputs):
        """Run the op on validated inputs: the reference (also for empty inputs), else the
        kernels of the resolved backend -- through the registered operators when being compiled
        by ``torch.compile`` (the Triton ones for "triton"), else through the eager fast path.
        The first input decides the device and dtype."""
        x = inputs[0]
        be = backends.resolve(self.name, backend, x.device, x.dtype)
        if be == "reference" or x.numel() == 0:
            return self.reference(*inputs)
        if torch.compiler.is_compiling():
            out = self.triton(*inputs) if be == "triton" else self.registered(*inputs, be)
            return out if self._n_outputs == 1 else out[0]
        return self._function.apply(*inputs, be)

    # --- the pieces shared by every path -------------------------------------------------------
    def _contiguous(self, inputs) -> list:
        inputs = list(inputs)
        for i in self._tensor_index:
            inputs[i] = inputs[i].contiguous()
        return inputs

    def _to_save(self, inputs, output) -> tuple:
        """(saved tensors, saved non-tensor values) from the inputs and the forward's output."""
        if self._saves_outputs:
            inputs = (*inputs[:self._n_inputs], *output)  # a registered op's inputs end with the backend
        return self._pick_tensors(inputs), self._pick_values(inputs)

    # --- torch.library operators ---------------------------------------------------------------
    def _register(self, name: str, make, kernels_of, backend_arg: list):
        """Define ``fastlmk::<name>`` and ``fastlmk::<name>_backward`` with ``make``
        (``torch.library.custom_op`` or ``triton_op``). With a ``backend_arg`` (``[("str",
        "backend")]``), the last argument of both is the backend name and ``kernels_of(backend)``
        gives its kernels; without (``[]``), ``kernels_of`` is the kernel set itself."""
        op_forward, op_backward, fake = self.forward, self.backward, self.fake
        n_in, n_saved_t, diff_saved = self._n_inputs, self._n_saved_tensors, self._diff_saved
        n_diff, with_needs, with_backend = len(diff_saved), self._with_needs, bool(backend_arg)
        contiguous, to_save = self._contiguous, self._to_save
        pick_needs = self._pick_needs if with_needs else (lambda needs_input_grad: ())
        scatter = self._scatter_grads[n_in + with_backend]

        def forward(*args):
            if with_backend:
                return op_forward(kernels_of(args[-1]), *contiguous(args[:-1]))
            return op_forward(kernels_of, *contiguous(args))

        def backward(grad, *args):
            k = kernels_of(args[-1]) if with_backend else kernels_of
            saved = [a.contiguous() for a in args[:n_saved_t]]
            rest = args[n_saved_t:-1] if with_backend else args[n_saved_t:]
            grads = op_backward(k, grad.contiguous(), *saved, *rest)
            if not with_needs:
                return grads
            return tuple(g if g is not None else _placeholder(saved[s]) for g, s in zip(grads, diff_saved))

        def backward_fake(grad, *args):
            saved = args[:n_saved_t]
            grads = [torch.empty_like(saved[s], memory_format=torch.contiguous_format) for s in diff_saved]
            if not with_needs:
                return grads[0]
            end = len(args) - with_backend
            needs = args[end - n_diff:end]
            return tuple(g if need else _placeholder(saved[s]) for g, s, need in zip(grads, diff_saved, needs))

        # the schemas come from the functions' signatures (triton_op accepts no schema string)
        forward.__signature__ = _signature(self._forward_args[0] + backend_arg, self._forward_args[1])
        backward.__signature__ = _signature(self._backward_args[0] + backend_arg, self._backward_args[1])
        fwd_op = make(f"fastlmk::{name}", forward, mutates_args=())
        bwd_op = make(f"fastlmk::{name}_backward", backward, mutates_args=())
        if make is torch.library.custom_op:  # a triton_op derives its fake by tracing its body
            fwd_op.register_fake(lambda *args: fake(*args[:n_in]))
            bwd_op.register_fake(backward_fake)
        bwd_overload = getattr(torch.ops.fastlmk, f"{name}_backward").default

        def setup_context(ctx, inputs, output):
            tensors, ctx.values = to_save(inputs, output)
            ctx.save_for_backward(*tensors)
            ctx.backend = inputs[n_in:]  # (backend,) or ()

        def autograd_backward(ctx, grad, *_extra_output_grads):
            needs = pick_needs(ctx.needs_input_grad)
            grads = bwd_overload(grad, *ctx.saved_tensors, *ctx.values, *needs, *ctx.backend)
            if not with_needs:
                return scatter((grads, None))
            # the placeholders of the gradients not asked for become None
            return scatter((*(g if need else None for g, need in zip(grads, needs)), None))

        fwd_op.register_autograd(autograd_backward, setup_context=setup_context)
        return getattr(torch.ops.fastlmk, name).default

    # --- the eager fast path -------------------------------------------------------------------
    def _eager_function(self):
        """An ``autograd.Function`` over the same forward and backward, called with the inputs
        and the backend; named ``_<Name>Fn`` (its graph nodes show as ``_<Name>FnBackward``).

        This runs on every eager call, so what it needs is bound here, once: each step is a
        local lookup or a C call (the itemgetters), as cheap as the hand-written Functions were."""
        op_forward, op_backward, kernels = self.forward, self.backward, backends.kernels
        tensor_index, multi_output, saves_outputs = self._tensor_index, self._n_outputs > 1, self._saves_outputs
        pick_tensors, pick_values = self._pick_tensors, self._pick_values
        pick_needs = self._pick_needs if self._with_needs else None
        scatter = self._scatter_grads[self._n_inputs + 1]

        def forward(ctx, *args):
            inputs = list(args)
            backend = inputs.pop()
            for i in tensor_index:
                inputs[i] = inputs[i].contiguous()
            output = op_forward(kernels(backend), *inputs)
            pool = (*inputs, *output) if saves_outputs else inputs
            ctx.save_for_backward(*pick_tensors(pool))
            ctx.values = pick_values(pool)
            ctx.backend = backend
            return output[0] if multi_output else output

        @once_differentiable  # the kernels' backward is not differentiable: a double backward raises
        def backward(ctx, grad):
            k = kernels(ctx.backend)
            if pick_needs is None:
                return scatter((op_backward(k, grad.contiguous(), *ctx.saved_tensors, *ctx.values), None))
            # the kernels skip a gradient not asked for, and return None for it
            needs = pick_needs(ctx.needs_input_grad)
            grads = op_backward(k, grad.contiguous(), *ctx.saved_tensors, *ctx.values, *needs)
            return scatter((*grads, None))

        cls_name = "_" + "".join(w.capitalize() for w in self.name.split("_")) + "Fn"
        return type(cls_name, (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def declare(schema: str, *, saved: str, differentiable: str, forward, backward, fake, reference) -> KernelOp:
    """Declare an op (see the module docstring) and build its wiring.

    Args:
        schema: ``"<name>(<inputs>) -> <outputs>"`` in ``torch.library`` schema syntax, with named
            outputs, e.g. ``"soft_argmax(Tensor heatmaps, float temperature, bool marginal) ->
            (Tensor points, Tensor stats)"``. The name is that of ``torch.ops.fastlmk.<name>``, of
            the kernels ``<name>_forward`` / ``<name>_backward`` of every backend, and the one in
            error messages; the first output is the op's result.
        saved: names (of inputs or outputs) the backward reads after the gradient, tensors first.
        differentiable: names of the tensor inputs that get a gradient.
        forward, backward, fake, reference: see the module docstring.
    """
    return KernelOp(schema, saved, differentiable, forward, backward, fake, reference)


def register_triton(kernels) -> None:
    """Register ``fastlmk::triton_<name>`` (and its backward) for every declared op over the
    Triton kernel set ``kernels``; called once, by :mod:`fastlmk.ops.triton` on import."""
    make = torch.library.custom_op if backends.triton_interpreted() else torch.library.triton_op
    for op in _DECLARED.values():
        if op.triton is None:
            op.triton = op._register(f"triton_{op.name}", make, kernels, [])
