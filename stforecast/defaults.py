"""The one set of defaults every command shares (forecast, report, batch, evaluate, benchmark), so the same
forecast is drawn the same way wherever it is asked for. Plain numbers: importing this costs nothing."""

#: DDIM steps wherever DSTPP is sampled: DDIM-50 matched the full DDPM chain's scores at 4-7x its speed
#: (`python -m benchmarks.preset_quality`)
SAMPLER_STEPS = 50
#: samples per forecast when scoring (`stforecast evaluate`; data/benchmark.toml uses the same)
SCORE_SAMPLES = 200
#: location coverage needs a KDE of the samples per event (the costly part of scoring): computed on at most this
#: many events, and every output says so
HDR_EVENTS = 300
