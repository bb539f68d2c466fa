"""``nca eval``'s library: finding a training run and rebuilding it, the protocol's report
and pictures, and the sample sets; the protocol and its metrics are
:mod:`nca_cli.measures`."""
