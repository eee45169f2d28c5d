"""stforecast: spatio-temporal event forecasting with diffusion point processes."""

__version__ = "0.1.0"
