"""The scoring defaults every command shares (evaluate, benchmark). How forecasts are sampled is one frozen
:class:`stforecast.sampling.Sampling` (its defaults: ``stforecast.sampling.DEFAULT``). Plain numbers: importing
this costs nothing."""

#: samples per forecast when scoring (`stforecast evaluate`; data/benchmark.toml uses the same)
SCORE_SAMPLES = 200
#: location coverage needs a KDE of the samples per event (the costly part of scoring): computed on at most this
#: many events, and every output says so
HDR_EVENTS = 300
#: CSEP catalog forecasts: each simulated catalog stops at this many events (pyCSEP's catalog forecasts are capped
#: the same way; every day's record and summary counts the catalogs that reached it: their counts are lower bounds)
CSEP_MAX_EVENTS = 1000
#: catalogs simulated in one lock-step: all of a day's 10,000 by default. Retired catalogs leave the batch, so a
#: long-running few share one tail of steps instead of one tail per chunk (the mainshock day: 40 s in one, 390 s
#: in chunks of 1,000); memory is that of the live catalogs (measured in benchmarks/README.md, "CSEP days")
CSEP_CHUNK = 10_000
