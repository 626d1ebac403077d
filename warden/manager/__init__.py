"""The Manager: the election over the central Redis (``machine`` decides, ``election``
holds the atomic scripts, ``manager`` is the thread that carries decisions out,
``liveness`` watches a leader's liveness channel), and what a leader does: scaling
passes (``scaler``) over demand metrics (``demand``), and host drains (``drain``)."""
