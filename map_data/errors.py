"""Errors of map_data, each naming the input at fault; all subclass :class:`MapDataError` (ValueError)."""

from __future__ import annotations


class MapDataError(ValueError):
    """Base class of every map_data error."""


class MapFileError(MapDataError):
    """A map or camera file is missing, unreadable or malformed."""


class NetworkUnavailableError(MapDataError):
    """An online source (osmnx download) was asked for but no network is reachable."""


class EmptyGraphError(MapDataError):
    """No drivable edge is left after loading and filtering."""


class GraphAttributeError(MapDataError):
    """A graph does not follow the attribute conventions of :mod:`map_data.types`."""


class CameraError(MapDataError):
    """A camera record is invalid."""


class CameraOutsideMapError(CameraError):
    """A camera lies outside the map's extent."""


class CameraSeesNothingError(CameraError):
    """A camera's field of view and range contain no drivable edge."""


class UnknownCameraError(CameraError, KeyError):
    """A camera id that the network does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown camera"
