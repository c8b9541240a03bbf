"""Guidance: escape-route prediction and interception planning (pure, deterministic core).

* :mod:`guidance.types` — crews, predictions, no-go areas, suggestions, plans;
* :mod:`guidance.models` — named behaviour models and the destination mixture;
* :mod:`guidance.prediction` — :class:`~guidance.prediction.EscapePredictor`;
* :mod:`guidance.positions` — where the sampled suspect is at a given time;
* :mod:`guidance.coverage` — max-coverage (greedy and exact MIP);
* :mod:`guidance.planner` — :class:`~guidance.planner.InterceptionPlanner`;
* :mod:`guidance.coordinator` — :class:`~guidance.coordinator.Coordinator`, the facade the
  server and the simulator call;
* :mod:`guidance.geojson` — RFC 7946 views for maps.
"""
