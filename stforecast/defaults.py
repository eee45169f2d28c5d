"""The scoring defaults every command shares (evaluate, benchmark). How forecasts are sampled is one frozen
:class:`stforecast.sampling.Sampling` (its defaults: ``stforecast.sampling.DEFAULT``). Plain numbers: importing
this costs nothing."""

#: samples per forecast when scoring (`stforecast evaluate`; data/benchmark.toml uses the same)
SCORE_SAMPLES = 200
#: location coverage needs a KDE of the samples per event (the costly part of scoring): computed on at most this
#: many events, and every output says so
HDR_EVENTS = 300
