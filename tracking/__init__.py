"""Tracking of a suspect vehicle on the street graph from camera sightings.

Public API: :class:`Sighting` in, :class:`Belief` out, through :class:`Tracker` (one incident)
or :class:`Tracks` (several). :class:`BranchModel` is the protocol of branch priors at
crossings, shared with guidance's escape-route prediction.
"""

from tracking.behaviour import BranchContext, BranchModel, BranchTableModel, RoadBehaviour
from tracking.config import TrackerConfig
from tracking.errors import (
    IncidentAlreadyOpenError,
    NoBeliefError,
    TrackingError,
    UnknownIncidentError,
    WrongIncidentError,
)
from tracking.tracker import Tracker, Tracks
from tracking.types import (
    Belief,
    RouteProbability,
    Sighting,
    SightingFlag,
    SourceKind,
    TrackUpdate,
    WeightedPosition,
)

__all__ = [
    "Belief",
    "BranchContext",
    "BranchModel",
    "BranchTableModel",
    "IncidentAlreadyOpenError",
    "NoBeliefError",
    "RoadBehaviour",
    "RouteProbability",
    "Sighting",
    "SightingFlag",
    "SourceKind",
    "TrackUpdate",
    "Tracker",
    "TrackerConfig",
    "TrackingError",
    "Tracks",
    "UnknownIncidentError",
    "WeightedPosition",
    "WrongIncidentError",
]
