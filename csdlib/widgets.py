"""Notebook 04's tuning panel (ipywidgets): a slider per k-matrix entry and one for the lenience, each
move re-evaluated at once (`tuning.evaluate_cascade`, best against a `CachedTarget`) and plotted, and an
**optimize** button (`tuning.optimize` from the sliders' setting, then predicted vs measured wall time
with the real target)::

    TuningPanel(cached, fam.drafters, prompts, fam.k_matrix, fam.lenience, latency=latency,
                measure_with=fam.target)

The sliders carry `tuning.optimize`'s parameter names (``k<i>_<j>``: row i = the reviewing level, target
first; column j = drafter j) and are read back with `tuning.k_matrix_from_params`; the tree-size sliders
(``tree_width``, ``tree_depth``, ``tree_extend``, ``tree_budget``: the target's tree drafts, width 1 = chain) with
`tuning.tree_of`.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from . import plots, tuning
from .protocol import is_free


def k_matrix_sliders(drafter_names, k_matrix, lenience: float = 1.0, *, k_max: int = 8,
                     mag_k: int | None = None) -> dict:
    """{parameter name: slider}: an IntSlider ``k<i>_<j>`` per upper-triangular entry, labelled
    ``L<i>←<drafter>`` (0..`k_max`; MaG's column, when `mag_k` is given: 0..mag_k, its draft size), then
    the ``lenience`` FloatSlider (1..6 in steps of 0.5)."""
    n = len(k_matrix)
    sliders = {}
    for i in range(n):
        for j in range(i, n):
            size = mag_k is not None and j == n - 1          # MaG's column: its draft size
            sliders[f"k{i}_{j}"] = widgets.IntSlider(value=k_matrix[i][j], min=0, max=mag_k if size else k_max,
                                                     description=f"L{i}←{drafter_names[j]}" + " size" * size)
    sliders["lenience"] = widgets.FloatSlider(value=lenience, min=1.0, max=6.0, step=0.5, description="lenience")
    return sliders


def tree_sliders(tree=None, *, width_max: int = 4, depth_max: int = 8, extend_max: int = 4) -> dict:
    """{parameter name: slider} for the target's tree drafts (`tuning.tree_of` reads them back): its
    width (1: the chain), the draft positions that branch, MaG tokens continuing each branch, and the
    budget of extra candidates (the likeliest kept; at its top: every one)."""
    row = tree.widths[0] if tree is not None and tree.widths else ()
    most = max(1, (width_max - 1) * depth_max)
    return {"tree_width": widgets.IntSlider(value=max(row, default=1), min=1, max=width_max, description="tree width"),
            "tree_depth": widgets.IntSlider(value=len(row) or 1, min=1, max=depth_max, description="tree depth"),
            "tree_extend": widgets.IntSlider(value=tree.extend if tree is not None else 0, min=0, max=extend_max,
                                             description="tree extend"),
            "tree_budget": widgets.IntSlider(value=min(most, tree.budget if tree is not None and tree.budget else most),
                                             min=1, max=most, description="tree budget")}


class TuningPanel(widgets.VBox):
    """The sliders with their live output (an ``interactive``), the optimize button and its report.

    `target`: what the sliders evaluate against (a `CachedTarget` makes each move take a fraction of a
    second); `measure_with`: the real target, for the optimize button's predicted-vs-measured table
    (needs `latency`). `objective`: what the plot shows and the optimizer maximises: "latency" (the
    predicted speedup) or a cost table ("parameters"). `history` holds every evaluation (the first is
    the initial setting); `best` the best by SWI under the parameter-count costs."""

    def __init__(self, target, drafters, prompts, k_matrix, lenience: float = 1.0, *, latency=None,
                 max_new_tokens: int = 64, k_max: int = 8, objective: str = "latency", n_trials: int = 20,
                 measure_with=None, tree=None, tree_max: tuple = (4, 8, 4)):
        self.target, self.drafters, self.prompts, self.latency = target, drafters, prompts, latency
        self.max_new_tokens, self.k_max, self.objective, self.n_trials = max_new_tokens, k_max, objective, n_trials
        self.measure_with, self.n = measure_with, len(k_matrix)
        self.history, self.best, self._setting = [], tuning.BestSoFar("parameters"), False
        mag_k = drafters[-1].k if is_free(drafters[-1]) else None
        self.sliders = k_matrix_sliders([d.name for d in drafters], k_matrix, lenience, k_max=k_max, mag_k=mag_k)
        self.tree_max = tree_max
        self.sliders.update(tree_sliders(tree, width_max=tree_max[0], depth_max=tree_max[1], extend_max=tree_max[2]))
        self.interactive = widgets.interactive(self._show, **self.sliders)     # evaluates the initial setting
        self.button = widgets.Button(description="optimize",
                                     tooltip=f"tuning.optimize, {n_trials} trials, objective {objective}")
        self.report = widgets.Output()
        self.button.on_click(lambda _: self.optimize())
        super().__init__([self.interactive, self.button, self.report])

    @property
    def k_matrix(self) -> list[list[int]]:
        return tuning.k_matrix_from_params({k: s.value for k, s in self.sliders.items()}, self.n)

    @property
    def lenience(self) -> float:
        return self.sliders["lenience"].value

    @property
    def tree(self):
        return tuning.tree_of({k: s.value for k, s in self.sliders.items()})

    def _show(self, **values):
        """The sliders' callback (their values by name): evaluate the setting, print it with the best so
        far, plot. (Only keyword arguments: `interactive` shows the sliders in their order.)"""
        if self._setting:
            return
        k, lenience, tree = tuning.k_matrix_from_params(values, self.n), values["lenience"], tuning.tree_of(values)
        r = tuning.evaluate_cascade(self.target, self.drafters, self.prompts, k, lenience,
                                    max_new_tokens=self.max_new_tokens, latency=self.latency, tree=tree)
        self.history.append(r)
        self.best.update(r)
        speedup = f"predicted speedup {r['predicted_speedup']:.3f}, " if "predicted_speedup" in r else ""
        print(f"k_matrix={k} lenience={lenience:g} tree={tree}: {speedup}SWI {r['swi']['parameters']:.3f}, "
              f"tokens/target call {r['tokens_per_target_call']:.2f}")
        print(self.best)
        fig = plots.tuning_plot(r, self.history, table=self.objective)
        plt.show()
        plt.close(fig)

    def set(self, k_matrix, lenience: float, tree=None) -> None:
        """Move the sliders to a setting (tree None: the chain) and evaluate it once."""
        self._setting = True
        try:
            for i in range(self.n):
                for j in range(i, self.n):
                    self.sliders[f"k{i}_{j}"].value = k_matrix[i][j]
            self.sliders["lenience"].value = lenience
            for name, slider in tree_sliders(tree, width_max=self.tree_max[0], depth_max=self.tree_max[1],
                                             extend_max=self.tree_max[2]).items():
                self.sliders[name].value = slider.value
        finally:
            self._setting = False
        self.interactive.update()

    def optimize(self):
        """The button: `tuning.optimize` from the sliders' setting, the sliders moved to its result, and
        (with `measure_with`) predicted vs measured wall time of AR and the result, in the report."""
        with self.report:
            self.report.clear_output()
            tuned = tuning.optimize(self.target, self.drafters, self.prompts, self.objective, n_trials=self.n_trials,
                                    k_max=self.k_max, latency=self.latency, start=(self.k_matrix, self.lenience),
                                    max_new_tokens=self.max_new_tokens, tree_max=self.tree_max)
            self.set(tuned.k_matrix, tuned.lenience, tuned.tree)
            print(f"optimize: {len(tuned.study.trials)} trials in {tuned.seconds:.1f} s -> k_matrix={tuned.k_matrix}, "
                  f"lenience={tuned.lenience:g}, tree={tuned.tree}, {self.objective} {tuned.value:.3f}")
            if self.measure_with is not None:
                print("measuring with the real target ...")
                display(tuning.predicted_vs_measured(self.measure_with, self.drafters, self.prompts, tuned.k_matrix,
                                                     tuned.lenience, latency=self.latency,
                                                     max_new_tokens=self.max_new_tokens, tree=tuned.tree).round(3))
        return tuned
