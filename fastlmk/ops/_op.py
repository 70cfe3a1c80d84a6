"""One declaration per op, and the factory that wires it into PyTorch.

An op is declared once, in its own module, with :func:`declare`: its name; its inputs, outputs
and the values its backward reads, as schema text; which inputs are differentiable; and four
plain functions:

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


def _returns(n: int) -> str:
    return "Tensor" if n == 1 else "(" + ", ".join(["Tensor"] * n) + ")"


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

    def __init__(self, name, inputs, outputs, saved, differentiable, forward, backward, fake, reference):
        self.name = name
        self.forward, self.backward, self.fake, self.reference = forward, backward, fake, reference
        args = _args(inputs)
        outs = [n for _, n in _args(outputs)]
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
        needs = "".join(f", bool need_{n}" for n in diff) if self._with_needs else ""
        saved_args = ", ".join(f"{types[n]} {n}" for n in saved)
        self._schemas = (f"({inputs}{{backend}}) -> {_returns(len(outs))}",
                         f"(Tensor grad, {saved_args}{needs}{{backend}}) -> {_returns(len(diff))}")
        self.registered = self._register(name, torch.library.custom_op, backends.kernels, ", str backend")
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

    def _needs(self, needs_input_grad) -> tuple:
        """The backward's ``need_<input>`` flags (none for a single differentiable input)."""
        return self._pick_needs(needs_input_grad) if self._with_needs else ()

    def _input_grads(self, grads, n: int) -> tuple:
        """One entry per argument of the forward (``n`` of them): the gradients of the
        differentiable inputs (None where not asked for), None for the others."""
        return self._scatter_grads[n]((*grads, None) if self._with_needs else (grads, None))

    # --- torch.library operators ---------------------------------------------------------------
    def _register(self, name: str, make, kernels_of, backend_arg: str):
        """Define ``fastlmk::<name>`` and ``fastlmk::<name>_backward`` with ``make``
        (``torch.library.custom_op`` or ``triton_op``). With ``backend_arg``, the last argument
        of both is the backend name and ``kernels_of(backend)`` gives its kernels; without,
        ``kernels_of`` is the kernel set itself."""
        n_in, n_saved_t = self._n_inputs, self._n_saved_tensors
        fwd_schema, bwd_schema = (s.format(backend=backend_arg) for s in self._schemas)
        if backend_arg:
            def split(args):
                return kernels_of(args[-1]), args[:-1]
        else:
            def split(args):
                return kernels_of, args

        def forward(*args):
            k, inputs = split(args)
            return self.forward(k, *self._contiguous(inputs))

        def backward(grad, *args):
            k, args = split(args)
            saved = [a.contiguous() for a in args[:n_saved_t]]
            grads = self.backward(k, grad.contiguous(), *saved, *args[n_saved_t:])
            if not self._with_needs:
                return grads
            return tuple(g if g is not None else _placeholder(saved[s]) for g, s in zip(grads, self._diff_saved))

        def backward_fake(grad, *args):
            saved = args[:n_saved_t]
            grads = [torch.empty_like(saved[s], memory_format=torch.contiguous_format) for s in self._diff_saved]
            if not self._with_needs:
                return grads[0]
            needs = args[len(args) - len(grads) - (1 if backend_arg else 0):][:len(grads)]
            return tuple(g if need else _placeholder(saved[s]) for g, s, need in zip(grads, self._diff_saved, needs))

        fwd_op = make(f"fastlmk::{name}", forward, mutates_args=(), schema=fwd_schema)
        bwd_op = make(f"fastlmk::{name}_backward", backward, mutates_args=(), schema=bwd_schema)
        if make is torch.library.custom_op:  # a triton_op derives its fake by tracing its body
            fwd_op.register_fake(lambda *args: self.fake(*args[:n_in]))
            bwd_op.register_fake(backward_fake)

        def setup_context(ctx, inputs, output):
            tensors, ctx.values = self._to_save(inputs, output)
            ctx.save_for_backward(*tensors)
            ctx.backend = inputs[n_in:]  # (backend,) or ()

        def autograd_backward(ctx, grad, *_extra_output_grads):
            needs = self._needs(ctx.needs_input_grad)
            grads = bwd_op(grad, *ctx.saved_tensors, *ctx.values, *needs, *ctx.backend)
            if self._with_needs:  # placeholders for the gradients not asked for -> None
                grads = tuple(g if need else None for g, need in zip(grads, needs))
            return self._input_grads(grads, n_in + len(ctx.backend))

        fwd_op.register_autograd(autograd_backward, setup_context=setup_context)
        return getattr(torch.ops.fastlmk, name).default

    # --- the eager fast path -------------------------------------------------------------------
    def _eager_function(self):
        """An ``autograd.Function`` over the same forward and backward, called with the inputs
        and the backend; named ``_<Name>Fn`` (its graph nodes show as ``_<Name>FnBackward``)."""
        op, n_args = self, self._n_inputs + 1

        def forward(ctx, *args):
            backend = args[-1]
            inputs = op._contiguous(args[:-1])
            output = op.forward(backends.kernels(backend), *inputs)
            tensors, ctx.values = op._to_save(inputs, output)
            ctx.save_for_backward(*tensors)
            ctx.backend = backend
            return output if op._n_outputs == 1 else output[0]

        @once_differentiable  # the kernels' backward is not differentiable: a double backward raises
        def backward(ctx, grad):
            needs = op._needs(ctx.needs_input_grad)
            grads = op.backward(backends.kernels(ctx.backend), grad.contiguous(), *ctx.saved_tensors, *ctx.values,
                                *needs)  # kernels return None for a gradient not asked for
            return op._input_grads(grads, n_args)

        cls_name = "_" + "".join(w.capitalize() for w in self.name.split("_")) + "Fn"
        return type(cls_name, (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def declare(name: str, *, inputs: str, outputs: str, saved: str, differentiable: str, forward, backward, fake,
            reference) -> KernelOp:
    """Declare an op (see the module docstring) and build its wiring.

    Args:
        name: the op's name: ``torch.ops.fastlmk.<name>``, the kernels ``<name>_forward`` /
            ``<name>_backward`` of every backend, the name in error messages.
        inputs: schema of the inputs, e.g. ``"Tensor points, int height, int width, float std"``.
        outputs: ``"Tensor <name>, ..."``; the first is the op's result.
        saved: names (of inputs or outputs) the backward reads after the gradient, tensors first.
        differentiable: names of the tensor inputs that get a gradient.
        forward, backward, fake, reference: see the module docstring.
    """
    return KernelOp(name, inputs, outputs, saved, differentiable, forward, backward, fake, reference)


def register_triton(kernels) -> None:
    """Register ``fastlmk::triton_<name>`` (and its backward) for every declared op over the
    Triton kernel set ``kernels``; called once, by :mod:`fastlmk.ops.triton` on import."""
    make = torch.library.custom_op if backends.triton_interpreted() else torch.library.triton_op
    for op in _DECLARED.values():
        if op.triton is None:
            op.triton = op._register(f"triton_{op.name}", make, kernels, "")
