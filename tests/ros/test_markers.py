"""dlp_ros.markers: a ParticleArray as an RViz MarkerArray (no DDS, no node)."""

from __future__ import annotations

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.msg')
pytest.importorskip('visualization_msgs.msg')

from visualization_msgs.msg import Marker  # noqa: E402

from dlp_ros.markers import (  # noqa: E402
    IDS_NS,
    IMAGE_WIDTH_M,
    PLANE_DISTANCE_M,
    SPHERES_NS,
    particle_markers,
)
from dlp_ros.overlay import colour  # noqa: E402

pytestmark = pytest.mark.ros


def test_a_sphere_and_an_id_per_on_particle_in_the_camera_frame(ros_msgs: object) -> None:
    msg = ros_msgs.particle_array(n_particles=4)  # 640 x 480 px
    for i, p in enumerate(msg.particles):
        p.id, p.on = i, i != 2
    p = msg.particles[1]
    p.u, p.v, p.u_std, p.v_std = 80.0, 180.0, 4.0, 2.0
    out = particle_markers(msg).markers
    assert out[0].action == Marker.DELETEALL and out[0].header == msg.header
    spheres = [m for m in out if m.ns == SPHERES_NS]
    labels = [m for m in out if m.ns == IDS_NS]
    assert [m.id for m in spheres] == [0, 1, 3] and [m.text for m in labels] == ['0', '1', '3']
    assert all(m.header == msg.header for m in out)
    assert all(m.type == Marker.SPHERE and m.action == Marker.ADD for m in spheres)
    assert all(m.type == Marker.TEXT_VIEW_FACING for m in labels)
    m_per_px = IMAGE_WIDTH_M / msg.image_width
    sphere = spheres[1]
    position = sphere.pose.position
    assert position.x == pytest.approx((80.0 - msg.image_width / 2) * m_per_px)
    assert position.y == pytest.approx((180.0 - msg.image_height / 2) * m_per_px)
    assert position.z == PLANE_DISTANCE_M and sphere.pose.orientation.w == 1.0
    # the 2-sigma ellipse: semi-axes 2 sigma, so diameters 4 sigma
    assert sphere.scale.x == pytest.approx(16.0 * m_per_px)
    assert sphere.scale.y == pytest.approx(8.0 * m_per_px)
    assert sphere.scale.z == pytest.approx(8.0 * m_per_px)
    r, g, b = colour(1)
    assert (sphere.color.r, sphere.color.g, sphere.color.b) == pytest.approx(
        (r / 255, g / 255, b / 255)
    )
    assert labels[1].pose.position.y < position.y  # the id above its sphere
    assert labels[1].scale.z > 0


def test_no_particle_on_gives_only_the_deleteall(ros_msgs: object) -> None:
    msg = ros_msgs.particle_array(n_particles=3)
    for p in msg.particles:
        p.on = False
    out = particle_markers(msg).markers
    assert [m.action for m in out] == [Marker.DELETEALL]


def test_a_zero_std_still_gives_a_visible_sphere(ros_msgs: object) -> None:
    msg = ros_msgs.particle_array(n_particles=1)
    msg.particles[0].u_std = msg.particles[0].v_std = 0.0
    sphere = particle_markers(msg).markers[1]
    assert min(sphere.scale.x, sphere.scale.y, sphere.scale.z) > 0
