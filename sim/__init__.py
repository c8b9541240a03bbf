"""The simulator: a fleeing suspect, cameras and operators, crews, around Cordon's core.

See docs/simulator.md. Entry points: :func:`sim.scenario.load_scenario`,
:func:`sim.scenario.build_city`, :class:`sim.world.CityContext`, :func:`sim.world.run_scenario`,
:func:`sim.batch.run_batch`, :func:`sim.replay.write_replay`, :func:`sim.outcomes.recompute`.
"""
