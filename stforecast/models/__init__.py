"""The next-event models and what they share.

* :mod:`.base`: the ``Forecaster`` interface (histories in, a next-event distribution out: samples and an exact
  likelihood from one object) and the plain data it passes (``Histories``, ``Samples``, ``NLL``, ``SimulatedChunk``);
* :mod:`.simulate`: the one lock-step catalog simulator;
* :mod:`.marks`: the Gutenberg–Richter law (density, sampler, b-value, completeness), for every model;
* :mod:`.dstpp`: the diffusion model, in its parts.

The classical baselines (Poisson × KDE, Hawkes, ETAS) are siblings in :mod:`stforecast.baselines`; nothing here
imports them. :mod:`stforecast.registry` names every model.
"""
