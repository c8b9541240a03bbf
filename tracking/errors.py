"""Errors of tracking. Each names the input at fault.

An unknown camera raises :class:`map_data.errors.UnknownCameraError` (the camera network owns it).
"""

from __future__ import annotations


class TrackingError(ValueError):
    """Base class of the tracking errors that are about a bad value."""


class UnknownIncidentError(KeyError):
    """A sighting or a query names an incident that is not open."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown incident"


class IncidentAlreadyOpenError(TrackingError):
    """``Tracks.open`` was called for an incident that is already open."""


class WrongIncidentError(TrackingError):
    """A sighting was given to the tracker of another incident."""


class NoBeliefError(TrackingError):
    """A belief was asked for before anything is known: no sighting yet and no incident origin."""
