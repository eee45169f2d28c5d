"""The MLflow (pyfunc) face of a trained DSTPP, logged as "model from code": MLflow stores this file, not a
pickle, and the weights travel as a plain ``state_dict`` checkpoint read with ``torch.load(weights_only=True)``.

``mlflow.pyfunc.load_model(uri).predict(histories, params={"n": 100})`` takes a long table of histories
(``history``, ``t``, ``x``, ``y``: model time and model coordinates, and ``magnitude`` for a model that reads
magnitudes) and returns ``n`` sampled next events per history (``history``, ``sample``, ``dt``, ``t``, ``x``,
``y`` and the marks the model forecasts). ``params``: ``n``, ``seed`` and the fields of
:class:`stforecast.sampling.Sampling` (``sampler``, ``steps``, ``tolerance``, ``magnitudes``): the same model,
history, seed and sampling give the same samples as ``stforecast forecast`` (both draw through
:func:`stforecast.forecast.next_event`'s path: the model's newest ``context`` events, one generator seeded once).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd


class DSTPPModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from stforecast.checkpoints import load_model

        self.model = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from stforecast.forecast import histories_from_table
        from stforecast.sampling import DEFAULT, Sampling

        params = params or {}
        n = int(params.get("n", 100))
        sampling = Sampling(sampler=str(params.get("sampler", DEFAULT.sampler)),
                            steps=int(params.get("steps", DEFAULT.steps)),
                            tolerance=float(params.get("tolerance", DEFAULT.tolerance)),
                            magnitudes=str(params.get("magnitudes", DEFAULT.magnitudes)))
        model = self.model.with_sampling(sampling)
        missing = [m for m in model.mark_names if m not in model_input]
        if missing:
            raise ValueError(f"this model reads the mark(s) {missing}: add them as columns of the histories table")
        ids, histories = histories_from_table(model_input, model.context)
        s = model.forecast(histories).sample(n, np.random.default_rng(int(params.get("seed", 0))))
        last_t = histories.last_t
        return pd.DataFrame({"history": np.repeat(ids, n), "sample": np.tile(np.arange(n), len(ids)),
                             "dt": s.events[..., 0].ravel(), "t": (last_t[:, None] + s.events[..., 0]).ravel(),
                             "x": s.events[..., 1].ravel(), "y": s.events[..., 2].ravel(),
                             **{k: v.ravel() for k, v in s.marks.items()}})


mlflow.models.set_model(DSTPPModel())
