"""Arrays whose data is not aligned to their elements (np.frombuffer at an odd offset) are refused by
every op, for every array argument, with a ValueError naming the function and the argument: a kernel
reading a misaligned float* is undefined behaviour (tools/sanitize.sh runs this file under UBSan)."""
import re

import numpy as np
import pytest

from fastdl import _C, ops

F32 = np.float32


def misaligned(a, offset=1):
    """A C-contiguous, writeable copy of a whose data starts `offset` bytes past an aligned address."""
    buf = np.zeros(a.nbytes + 16, np.uint8)
    m = buf[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and m.flags.writeable and not m.flags.aligned
    return m


def lists(f):
    """f taking params, grads, ... as keyword lists of two arrays, called with params0, params1, ... ."""
    def call(**kw):
        groups = {}
        for k, v in kw.items():
            groups.setdefault(k[:-1], [None, None])[int(k[-1])] = v
        return f(**groups)
    return call


# name: (function named in the message, call(**arrays), {argument: shape}, {argument: name in the message})
# Shapes: float32 arrays of that shape; "labels" is int64.
CASES = {
    "matmul": ("matmul", lambda a, b, bias, out: ops.matmul(a, b, bias=bias, out=out),
               dict(a=(5, 7), b=(7, 6), bias=(6,), out=(5, 6))),
    "matmul_reference": ("matmul_reference", lambda a, b, bias, out: ops.matmul_reference(a, b, bias=bias, out=out),
                         dict(a=(5, 7), b=(7, 6), bias=(6,), out=(5, 6))),
    "linear_forward": ("linear_forward",
                       lambda x, weight, bias, out: ops.linear_forward(x, weight, bias, "relu", out=out),
                       dict(x=(5, 7), weight=(6, 7), bias=(6,), out=(5, 6))),
    "linear_backward": ("linear_backward",
                        lambda dout, x, weight, dx, dweight, dbias: ops.linear_backward(
                            dout, x, weight, dx=dx, dweight=dweight, dbias=dbias, input_activation="relu"),
                        dict(dout=(5, 6), x=(5, 7), weight=(6, 7), dx=(5, 7), dweight=(6, 7), dbias=(6,))),
    "relu": ("relu", ops.relu, dict(x=(33,), out=(33,))),
    "relu_backward": ("relu_backward", ops.relu_backward, dict(dout=(33,), x=(33,), out=(33,))),
    "leaky_relu": ("leaky_relu", lambda x, out: ops.leaky_relu(x, 0.1, out=out), dict(x=(33,), out=(33,))),
    "leaky_relu_backward": ("leaky_relu_backward", lambda dout, x, out: ops.leaky_relu_backward(dout, x, 0.1, out=out),
                            dict(dout=(33,), x=(33,), out=(33,))),
    "sigmoid": ("sigmoid", ops.sigmoid, dict(x=(33,), out=(33,))),
    "sigmoid_backward": ("sigmoid_backward", ops.sigmoid_backward, dict(dout=(33,), y=(33,), out=(33,))),
    "tanh": ("tanh", ops.tanh, dict(x=(33,), out=(33,))),
    "tanh_backward": ("tanh_backward", ops.tanh_backward, dict(dout=(33,), y=(33,), out=(33,))),
    "softmax": ("softmax", ops.softmax, dict(x=(3, 10), out=(3, 10))),
    "softmax_backward": ("softmax_backward", ops.softmax_backward, dict(dout=(3, 10), y=(3, 10), out=(3, 10))),
    "step": ("step", ops.step, dict(x=(33,), out=(33,))),
    "all_finite": ("all_finite", ops.all_finite, dict(x=(33,))),
    "mse_loss": ("mse_loss", ops.mse_loss, dict(pred=(33,), target=(33,), out=(33,))),
    "l1_loss": ("l1_loss", ops.l1_loss, dict(pred=(33,), target=(33,), out=(33,))),
    "bce_with_logits": ("bce_with_logits", ops.bce_with_logits,
                        dict(logits=(33,), target=(33,), out=(33,))),
    "softmax_cross_entropy": ("softmax_cross_entropy", ops.softmax_cross_entropy,
                              dict(logits=(3, 10), labels=(3,), out=(3, 10))),
    "dropout": ("dropout", lambda x, out: ops.dropout(x, 0.5, 7, out=out), dict(x=(33,), out=(33,))),
    "dropout_backward": ("dropout_backward", lambda dout, out: ops.dropout_backward(dout, 0.5, 7, out=out),
                         dict(dout=(33,), out=(33,))),
    "batchnorm_forward_train": ("batchnorm_forward",
                                lambda x, gamma, beta, running_mean, running_var, out: ops.batchnorm_forward(
                                    x, gamma, beta, running_mean, running_var, training=True, out=out),
                                dict(x=(4, 3), gamma=(3,), beta=(3,), running_mean=(3,), running_var=(3,),
                                     out=(4, 3))),
    "batchnorm_forward_eval": ("batchnorm_forward",
                               lambda x, gamma, beta, running_mean, running_var, out: ops.batchnorm_forward(
                                   x, gamma, beta, running_mean, running_var, training=False, out=out),
                               dict(x=(4, 3), gamma=(3,), beta=(3,), running_mean=(3,), running_var=(3,),
                                    out=(4, 3))),
    "batchnorm_backward": ("batchnorm_backward",
                           lambda dout, x, gamma, mean, invstd, dx, dgamma, dbeta: ops.batchnorm_backward(
                               dout, x, gamma, mean, invstd, dx=dx, dgamma=dgamma, dbeta=dbeta),
                           dict(dout=(4, 3), x=(4, 3), gamma=(3,), mean=(3,), invstd=(3,), dx=(4, 3), dgamma=(3,),
                                dbeta=(3,))),
    "sgd_step": ("sgd_step", lambda param, grad, momentum_buf: ops.sgd_step(param, grad, momentum_buf, lr=0.1,
                                                                             momentum=0.9),
                 dict(param=(33,), grad=(33,), momentum_buf=(33,))),
    "sgd_step_many": ("sgd_step_many",
                      lists(lambda params, grads, momentum_bufs: ops.sgd_step_many(params, grads, momentum_bufs,
                                                                                   lr=0.1, momentum=0.9)),
                      dict(params0=(5,), params1=(33,), grads0=(5,), grads1=(33,), momentum_bufs0=(5,),
                           momentum_bufs1=(33,))),
    "adam_step": ("adam_step", lambda param, grad, m, v: ops.adam_step(param, grad, m, v, lr=0.1, step=1),
                  dict(param=(33,), grad=(33,), m=(33,), v=(33,))),
    "adam_step_many": ("adam_step_many",
                       lists(lambda params, grads, m, v: ops.adam_step_many(params, grads, m, v, lr=0.1,
                                                                             steps=[1, 1])),
                       dict(params0=(5,), params1=(33,), grads0=(5,), grads1=(33,), m0=(5,), m1=(33,), v0=(5,),
                            v1=(33,))),
    "stream_triad": ("stream_triad", lambda a, b, c: _C.bench.stream_triad(a, b, c, 2.0, 1),
                     dict(a=(33,), b=(33,), c=(33,))),
}


def message_name(arg):
    """params1 -> params[1] (the *_many functions name list items by index); others as they are."""
    return f"{arg[:-1]}[{arg[-1]}]" if arg[-1].isdigit() else arg


def arrays(shapes):
    rng = np.random.default_rng(0)
    out = {}
    for k, shape in shapes.items():
        if k == "labels":
            out[k] = rng.integers(0, 10, shape)
        else:
            out[k] = rng.uniform(0.25, 0.75, shape).astype(F32)  # a valid variance, invstd, v, bce target
    return out


ARGS = [(name, arg) for name, (_, _, shapes) in CASES.items() for arg in shapes]


@pytest.mark.parametrize("name", list(CASES))
def test_aligned_arguments_run(name):
    _, f, shapes = CASES[name]
    f(**arrays(shapes))  # the table itself is right: the call runs when nothing is misaligned


@pytest.mark.parametrize("name, arg", ARGS)
def test_misaligned_argument_is_refused(name, arg):
    fn, f, shapes = CASES[name]
    a = arrays(shapes)
    a[arg] = misaligned(a[arg])
    size, where = a[arg].itemsize, re.escape(message_name(arg))
    with pytest.raises(ValueError, match=rf"^{fn}: {where} is not aligned to its {size}-byte elements .*"
                                         rf"np\.require\({where}, requirements='A'\)"):
        f(**a)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_float32_at_any_offset_below_4_is_refused(offset):
    x = misaligned(np.arange(-8, 9, dtype=F32), offset)
    with pytest.raises(ValueError, match="relu: x is not aligned to its 4-byte elements"):
        ops.relu(x)


def test_int64_labels_aligned_to_4_only_are_refused():
    labels = misaligned(np.array([0, 1, 2]), offset=4)
    with pytest.raises(ValueError, match="labels is not aligned to its 8-byte elements"):
        ops.softmax_cross_entropy(np.zeros((3, 4), F32), labels)


def test_the_suggested_fix_works():
    # np.ascontiguousarray hands the same misaligned array back; np.require(..., 'A') makes an aligned copy.
    x = misaligned(np.linspace(-2, 2, 37, dtype=F32))
    assert np.shares_memory(np.ascontiguousarray(x), x)
    fixed = np.require(x, requirements="A")
    assert fixed.flags.aligned
    np.testing.assert_array_equal(ops.relu(fixed), np.maximum(x, 0))


def test_from_frombuffer():
    # The issue's own example: np.frombuffer(buf, np.float32, offset=1) is read-only and misaligned.
    buf = bytes(4 * 16 + 1)
    x = np.frombuffer(buf, np.float32, offset=1)
    with pytest.raises(ValueError, match="sigmoid: x is not aligned"):
        ops.sigmoid(x)


# ---------------------------------------------------------------- the Python layer converts instead
# fastdl.nn, fit/predict and the estimators convert their inputs once (dtype, layout): a misaligned
# array is copied there like a float64 one, so only fastdl.ops refuses it.
def test_nn_layers_and_losses_take_misaligned_arrays():
    from fastdl import nn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(F32)
    y = np.array([0, 2, 1, 1, 0, 2])
    model = nn.Sequential(nn.Linear(5, 4, rng=rng), nn.ReLU(), nn.Linear(4, 3, rng=rng))
    want = model(x)
    np.testing.assert_array_equal(model(misaligned(x)), want)
    for loss_fn, target in [(nn.CrossEntropyLoss(), y), (nn.MSELoss(), np.ones((6, 3), F32))]:
        assert loss_fn(misaligned(want), misaligned(target)) == loss_fn(want, target)
        model.backward(loss_fn.backward())
        model.backward(misaligned(loss_fn.backward()))


def test_fit_and_predict_take_misaligned_arrays():
    import fastdl
    from fastdl import nn, optim

    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 4)).astype(F32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 2, rng=np.random.default_rng(1)))
    fastdl.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), misaligned(X), misaligned(y),
               epochs=1, batch_size=None, verbose=0)
    np.testing.assert_array_equal(fastdl.predict(model, misaligned(X)), fastdl.predict(model, X))
