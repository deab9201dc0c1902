"""The pictures: Figures on the Agg canvas, right content, no pyplot state, bad input refused."""

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mxnet import nd

from adagrad_gluon import plotting
from adagrad_gluon.chapter import adagrad_2d, f_2d, train_2d
from adagrad_gluon.diagnostics import EffectiveLRRecorder
from adagrad_gluon.training import TrainResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(name, losses):
    """A TrainResult with the given ``(epoch, loss)`` pairs."""
    return TrainResult(name, losses[-1][1], losses, 0.1,
                       {"weight": np.zeros(5, np.float32), "bias": np.zeros(1, np.float32)})


def recorder(records=4, lr=0.1, decay=True):
    """A recorder fed with growing (``decay``) or constant from-scratch accumulators."""
    rec = EffectiveLRRecorder(lr=lr)
    for t in range(1, records + 1):
        scale = t if decay else 1
        rec(t / records, (nd.full((5, 1), scale), nd.full((1,), 2.0 * scale)))
    return rec


@pytest.fixture(autouse=True)
def no_pyplot_state():
    """Every picture leaves pyplot's figures and the backend as they were."""
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    yield
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == figures


def test_show_trace_2d_draws_the_path_over_contours():
    path = train_2d(adagrad_2d)
    fig = plotting.show_trace_2d(f_2d, path, title="eta 0.4")
    assert isinstance(fig, Figure) and isinstance(fig.canvas, FigureCanvasAgg)
    (ax,) = fig.axes
    iterates = ax.lines[0]
    np.testing.assert_allclose(iterates.get_xdata(), [p[0] for p in path])
    np.testing.assert_allclose(iterates.get_ydata(), [p[1] for p in path])
    assert ax.collections, "no contours"
    assert ax.get_title() == "eta 0.4"
    assert ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$"
    assert ax.get_xlim() == pytest.approx(plotting.BOOK_BOX[0])  # the book's view
    assert ax.get_ylim() == pytest.approx(plotting.BOOK_BOX[1])
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["iterates (20 steps)", "start", "end (-2.383, -0.159)"]


def test_show_trace_2d_widens_the_view_to_the_whole_path():
    path = [(-5.0, -2.0), (4.0, 3.0), (0.0, 0.0)]
    (ax,) = plotting.show_trace_2d(f_2d, path).axes
    assert ax.get_xlim()[1] >= 4.0 and ax.get_ylim()[1] >= 3.0


def test_show_trace_2d_takes_any_vectorized_f_and_an_existing_axes():
    fig, (left, right) = plotting.new_figure(2)
    out = plotting.show_trace_2d(lambda x1, x2: x1 * x2, [(-1.0, 1.0), (0.5, 0.5)], ax=right)
    assert out is fig
    assert right.lines and not left.lines


@pytest.mark.parametrize("path", [[], [(0.0, float("nan"))], [(1.0,)]])
def test_show_trace_2d_refuses_bad_paths(path):
    with pytest.raises(ValueError, match="path"):
        plotting.show_trace_2d(f_2d, path)


def test_plot_losses_one_line_per_run_and_auto_log_scale():
    runs = [result("a", [(0.5, 0.30), (1.0, 0.25)]), result("b", [(0.5, 0.31), (1.0, 0.24)])]
    (ax,) = plotting.plot_losses(runs, title="t").axes
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.31, 0.24])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a: final 0.2500",
                                                                   "b: final 0.2400"]
    assert ax.get_yscale() == "linear"  # a narrow range
    assert ax.get_xlabel() == "epoch" and ax.get_title() == "t"
    wide = [result("c", [(0.5, 10.0), (1.0, 0.2)])]
    assert plotting.plot_losses(wide).axes[0].get_yscale() == "log"
    assert plotting.plot_losses(wide, log_y=False).axes[0].get_yscale() == "linear"
    assert plotting.plot_losses(runs, log_y=True).axes[0].get_yscale() == "log"


def test_plot_losses_draws_a_diverged_run_as_gaps():
    runs = [result("diverged", [(0.5, 0.3), (1.0, float("inf"))])]
    (ax,) = plotting.plot_losses(runs).axes
    assert np.isnan(ax.lines[0].get_ydata()[1])


def test_plot_losses_refuses_no_results():
    with pytest.raises(ValueError, match="results"):
        plotting.plot_losses([])


def test_plot_effective_lr_one_line_per_coordinate():
    rec = recorder()
    (ax,) = plotting.plot_effective_lr(rec).axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["bias", "weight[0]", "weight[1]", "weight[2]", "weight[3]", "weight[4]",
                      r"$\propto 1/\sqrt{t}$"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), rec.series()["bias"][:, 0])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # the guide starts at the median first rate and falls like 1/sqrt(t)
    guide = ax.lines[-1].get_ydata()
    first = np.concatenate([s[0] for s in rec.series().values()])
    assert guide[0] == pytest.approx(np.median(first))
    assert guide[-1] == pytest.approx(guide[0] / 2)  # 4 times the epochs


def test_plot_effective_lr_strips_the_shared_parameter_prefix():
    rec = EffectiveLRRecorder()
    rec.epochs.append(1.0)
    rec.rates.append({"dense3_weight": np.ones((1, 2)), "dense3_bias": np.ones(1)})
    (ax,) = plotting.plot_effective_lr(rec, guide=False).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bias", "weight[0]",
                                                                   "weight[1]"]
    # only a whole block prefix goes: "w" is not one
    rec.rates[0] = {"weight": np.ones(1), "wd": np.ones(1)}
    (ax,) = plotting.plot_effective_lr(rec, guide=False).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["wd", "weight"]


def test_plot_effective_lr_refuses_an_empty_recorder():
    with pytest.raises(ValueError, match="no records"):
        plotting.plot_effective_lr(EffectiveLRRecorder())


def test_plot_sweep_marks_the_best_learning_rate():
    runs = [result("lr=0.01", [(1.0, 0.4)]), result("lr=0.1", [(1.0, 0.24)]),
            result("lr=1", [(1.0, 0.3)])]
    fig = plotting.plot_sweep(runs, [0.01, 0.1, 1.0], title="sweep")
    losses_ax, final_ax = fig.axes
    assert len(losses_ax.lines) == 3
    assert final_ax.get_xscale() == "log"
    np.testing.assert_allclose(final_ax.lines[0].get_ydata(), [0.4, 0.24, 0.3])
    assert [t.get_text() for t in final_ax.get_legend().get_texts()] == [
        "best: lr 0.1, loss 0.2400"]
    assert fig.get_suptitle() == "sweep"


def test_plot_sweep_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one result per learning rate"):
        plotting.plot_sweep([result("a", [(1.0, 0.3)])], [0.1, 1.0])


def test_plot_remedy_side_by_side_on_one_rate_scale():
    runs = [result("adagrad", [(1.0, 0.24)]), result("rmsprop", [(1.0, 0.25)])]
    fig = plotting.plot_remedy(runs, [recorder(decay=True), recorder(decay=False)])
    loss_ax, adagrad_ax, rmsprop_ax = fig.axes
    assert len(loss_ax.lines) == 2
    assert adagrad_ax.get_title() == "adagrad: effective rate"
    assert rmsprop_ax.get_title() == "rmsprop: effective rate"
    assert adagrad_ax.get_ylim() == rmsprop_ax.get_ylim()
    with pytest.raises(ValueError, match="one recorder per result"):
        plotting.plot_remedy(runs, [recorder()])


def test_save_figure_writes_a_small_png(tmp_path):
    fig = plotting.show_trace_2d(f_2d, train_2d(adagrad_2d))
    path = plotting.save_figure(fig, tmp_path / "trace.png")
    assert path == tmp_path / "trace.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) < 150_000
    assert fig.get_size_inches() * plotting.DPI == pytest.approx((600, 400))
