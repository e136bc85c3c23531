"""Particles as a visualization_msgs/MarkerArray for RViz (the perception node's dlp/markers).

Particles live in pixels of the camera image and have no metric depth, and the node does not
read the camera's intrinsics, so the markers are drawn on a plane in front of the camera in its
own optical frame (the image header's ``frame_id``: x right, y down, z forward): the image is
:data:`IMAGE_WIDTH_M` wide at :data:`PLANE_DISTANCE_M` along z, centred on the optical axis.
Each particle that is on gets a sphere whose axes are its 2-sigma position ellipse (diameter
4 sigma; the ellipse of ``~/overlay``) and a text marker with its id above it; the first marker
of every array is a DELETEALL, so particles that turned off disappear.
"""

from __future__ import annotations

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from dlp_ros.msg import ParticleArray
from dlp_ros.overlay import colour

PLANE_DISTANCE_M = 1.0  # z of the plane the particles are drawn on [m]
IMAGE_WIDTH_M = 1.0  # width of the image on that plane [m]
TEXT_HEIGHT_M = 0.04  # height of an id label [m]
SIGMAS = 2.0  # the sphere's semi-axes are SIGMAS standard deviations
MIN_SIZE_PX = 1.0  # smallest sphere diameter [px] (RViz does not draw a zero scale)
SPHERE_ALPHA = 0.6
SPHERES_NS = 'dlp_particles'
IDS_NS = 'dlp_particle_ids'


def particle_markers(msg: ParticleArray) -> MarkerArray:
    """The MarkerArray of one dlp_ros/ParticleArray: DELETEALL, then per particle that is on
    (its ``on`` field) a SPHERE (namespace ``dlp_particles``, marker id = particle id) and a
    TEXT_VIEW_FACING with the id (``dlp_particle_ids``), all with the message's header."""
    width, height = max(int(msg.image_width), 1), max(int(msg.image_height), 1)
    m_per_px = IMAGE_WIDTH_M / width
    markers = [Marker(header=msg.header, action=Marker.DELETEALL)]
    for p in msg.particles:
        if not p.on:
            continue
        r, g, b = (c / 255.0 for c in colour(int(p.id)))
        marker_id = int(p.id) & 0x7FFFFFFF  # Marker.id is an int32, a particle id a uint32
        x, y = (p.u - width / 2.0) * m_per_px, (p.v - height / 2.0) * m_per_px
        du = max(2.0 * SIGMAS * p.u_std, MIN_SIZE_PX) * m_per_px  # diameters [m]
        dv = max(2.0 * SIGMAS * p.v_std, MIN_SIZE_PX) * m_per_px
        sphere = Marker(
            header=msg.header,
            ns=SPHERES_NS,
            id=marker_id,
            type=Marker.SPHERE,
            action=Marker.ADD,
            pose=_pose(x, y, PLANE_DISTANCE_M),
            scale=Vector3(x=du, y=dv, z=min(du, dv)),
            color=ColorRGBA(r=r, g=g, b=b, a=SPHERE_ALPHA),
            lifetime=Duration(),
        )
        label = Marker(
            header=msg.header,
            ns=IDS_NS,
            id=marker_id,
            type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD,
            pose=_pose(x, y - dv / 2.0 - TEXT_HEIGHT_M, PLANE_DISTANCE_M - 0.01),
            scale=Vector3(x=0.0, y=0.0, z=TEXT_HEIGHT_M),
            color=ColorRGBA(r=r, g=g, b=b, a=1.0),
            text=str(int(p.id)),
        )
        markers += [sphere, label]
    return MarkerArray(markers=markers)


def _pose(x: float, y: float, z: float) -> Pose:
    """A geometry_msgs/Pose at (x, y, z) [m] without rotation."""
    return Pose(position=Point(x=float(x), y=float(y), z=float(z)), orientation=Quaternion(w=1.0))
