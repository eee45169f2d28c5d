"""The MLflow (pyfunc) face of a trained DSTPP, logged as "model from code": MLflow stores this file, not a
pickle, and the weights travel as a plain ``state_dict`` checkpoint read with ``torch.load(weights_only=True)``.

``mlflow.pyfunc.load_model(uri).predict(histories, params={"n": 100})`` takes a long table of histories
(``history``, ``t``, ``x``, ``y``: model time and model coordinates, sorted by time within each history) and
returns ``n`` sampled next events per history (``history``, ``sample``, ``dt``, ``t``, ``x``, ``y``).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd


class DSTPPModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from stforecast.train import load_model

        self.model = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        from stforecast.batch import SequenceSet

        params = params or {}
        n = int(params.get("n", 100))
        frame = model_input.sort_values(["history", "t"], kind="stable")
        ids, first = np.unique(frame["history"].to_numpy(), return_index=True)
        offsets = np.r_[first, len(frame)].astype(np.int64)
        t = frame["t"].to_numpy(float)
        data = SequenceSet(t, frame["x"].to_numpy(float), frame["y"].to_numpy(float), t[first],
                           np.zeros(len(frame), bool), offsets)
        batch = data.collate(np.arange(len(ids)))
        gen = torch.Generator().manual_seed(int(params.get("seed", 0)))
        s = self.model.sample_next(batch, n, sampler=params.get("sampler", "ddim"),
                                   steps=int(params.get("steps", 50)), generator=gen).numpy()
        last_t = t[offsets[1:] - 1]
        return pd.DataFrame({"history": np.repeat(ids, n), "sample": np.tile(np.arange(n), len(ids)),
                             "dt": s[..., 0].ravel(), "t": (last_t[:, None] + s[..., 0]).ravel(),
                             "x": s[..., 1].ravel(), "y": s[..., 2].ravel()})


mlflow.models.set_model(DSTPPModel())
