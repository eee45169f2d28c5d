"""The diffusion machinery, beside the network and never inside it (diffusers' split): the noise schedule and its
samplers (:mod:`.schedule`: DDPM, DDIM, DPM-Solver behind one ``sample_loop``) and the probability-flow ODE with its
exact likelihood (:mod:`.ode`). Nothing here knows the network: a sampler is handed a ``denoise(x_k, k)``."""
