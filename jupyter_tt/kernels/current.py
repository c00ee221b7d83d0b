"""Inside a kernel: the devices it holds (``jupyter_tt.lease()``) and opening them with ttnn.

The provisioner tells the kernel its lease through ``JUPYTER_TT_LEASE`` and which scheduler holds it
through ``JUPYTER_TT_SCHEDULER`` / ``JUPYTER_TT_STATE_DIR`` / ``JUPYTER_TT_INVENTORY``; the details come from there.
"""

from __future__ import annotations

import atexit
import html
import importlib.util
import os
from dataclasses import asdict, dataclass, fields

from ..config import TTSettings
from ..devices.sfpi import installed_ttnn_sfpi
from ..errors import LeaseError, TTError
from ..scheduler import Lease, open_scheduler
from .mesh import MeshPlan, Runner, close_mesh, mesh_plans, mesh_shape, open_mesh

NO_LEASE = (
    "this kernel holds no Tenstorrent devices (JUPYTER_TT_LEASE is not set). Pick a kernel that asks for "
    "some, such as 'Python 3 (1× n300, 2 chips)', or install one: "
    "jupyter tt kernelspec install --devices 1 --card-type n300 --name tt-n300"
)


@dataclass(frozen=True)
class KernelLease(Lease):
    """The lease of this kernel as the scheduler records it, and what ttnn needs to open it."""

    simulated: bool = False
    active: bool = True
    end_reason: str | None = None

    @property
    def mesh_shape(self) -> tuple[int, int]:
        """The mesh every runner opens this lease's chips as: one row of them (a LoudBox 1×8)."""
        return mesh_shape(self._card_type, self.chips)

    @property
    def _card_type(self) -> str:
        return self.card_types[0] if len(self.card_types) == 1 else "mixed"

    @property
    def meshes(self) -> dict[Runner, MeshPlan]:
        """How each runner opens this lease: ``open_mesh_device()``, the ttnn backend (jupyter-tt and
        tt-transformers) and vLLM (whose TT plugin opens it): shape, fabric and ``MESH_DEVICE``."""
        return mesh_plans(self._card_type, len(self.devices), self.chips)

    def _mesh_summary(self) -> str:
        plan = self.meshes[Runner.NOTEBOOK]
        fabric = f"fabric {plan.fabric}" if plan.fabric else "no fabric (one chip)"
        return f"mesh {plan.shape[0]}×{plan.shape[1]}, {fabric}, MESH_DEVICE={plan.mesh_device}"

    def to_json(self) -> dict:
        return {
            **super().to_json(),
            "devices": [asdict(d) for d in self.devices],
            "mesh_shape": list(self.mesh_shape),
            "meshes": {r.value: plan.to_json() for r, plan in self.meshes.items()},
            "simulated": self.simulated,
            "active": self.active,
            "end_reason": self.end_reason,
        }

    def __repr__(self) -> str:
        state = "active" if self.active else f"ENDED ({self.end_reason})"
        sim = " [SIMULATED]" if self.simulated else ""
        devices = ", ".join(f"{d.id}:{d.card_type}@{d.bdf}" for d in self.devices)
        return (f"<Lease {self.id}{sim} {state}: {len(self.devices)} device(s) [{devices}], {self.chips} chips, "
                f"{self._mesh_summary()} (every runner)>")

    def _repr_html_(self) -> str:
        badge = (
            '<span style="background:#b45309;color:white;padding:1px 6px;border-radius:3px">SIMULATED</span> '
            if self.simulated
            else ""
        )
        state = "active" if self.active else f"<b>ended</b>: {html.escape(self.end_reason or '')}"
        body = "".join(
            f"<tr><td>{html.escape(str(d.id))}</td><td>{html.escape(d.card_type)}</td><td><code>{html.escape(d.bdf)}</code></td>"
            f"<td>{html.escape(str(d.chips))}</td><td><code>{html.escape(d.path)}</code></td></tr>"
            for d in self.devices
        )
        meshes = "".join(
            f"<tr><td><code>{html.escape(p.runner.value)}</code></td><td>{p.shape[0]}×{p.shape[1]}</td>"
            f"<td>{html.escape(p.fabric or 'none')}</td><td><code>{html.escape(p.mesh_device)}</code></td>"
            f"<td>{html.escape(p.opened_by)}</td></tr>"
            for p in self.meshes.values()
        )
        return (
            f"<div class='jupyter-tt-lease'>{badge}<b>Lease {html.escape(self.id)}</b> · {html.escape(self.user)} · "
            f"{state} · {html.escape(str(self.chips))} chips · {html.escape(self._mesh_summary())}"
            "<table><thead><tr><th>device</th><th>card</th><th>PCI BDF</th><th>chips</th><th>node</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
            "<table><thead><tr><th>runner</th><th>opens</th><th>fabric</th><th>MESH_DEVICE</th><th>opened by</th></tr>"
            f"</thead><tbody>{meshes}</tbody></table></div>"
        )


def lease() -> KernelLease:
    """The lease this kernel holds. LeaseError (with what to do) when it holds none."""
    lease_id = os.environ.get("JUPYTER_TT_LEASE")
    if not lease_id:
        raise LeaseError(NO_LEASE)
    scheduler = open_scheduler(TTSettings())
    simulated = scheduler.inventory.simulated
    current = scheduler.get_lease(lease_id)
    if current is not None:
        return KernelLease(**{f.name: getattr(current, f.name) for f in fields(Lease)}, simulated=simulated)
    ended = scheduler.ended_lease(lease_id)
    if ended is None:
        raise LeaseError(
            f"lease {lease_id} is unknown to the scheduler ({scheduler.mode} mode, {scheduler.state_dir}): this kernel's "
            f"JUPYTER_TT_SCHEDULER / JUPYTER_TT_STATE_DIR / JUPYTER_TT_INVENTORY differ from its server's. Restart the kernel"
        )
    past, reason = ended
    return KernelLease(**{f.name: getattr(past, f.name) for f in fields(Lease)}, simulated=simulated, active=False,
                       end_reason=reason)


_open_meshes: list[tuple[object, MeshPlan]] = []


def check_device_lease() -> KernelLease:
    """The lease, if it holds Wormhole devices to run on: LeaseError on no, an ended, a simulated or a
    mixed lease (ttnn opens one mesh of like chips). Cheap: nothing is imported or opened."""
    current = lease()
    if not current.active:
        raise LeaseError(f"lease {current.id} has ended ({current.end_reason}): restart the kernel to get devices again")
    if current.simulated:
        raise LeaseError(
            f"lease {current.id} is on a simulated inventory: there is no Wormhole device to open. Run on a host "
            f"with Tenstorrent cards (JUPYTER_TT_INVENTORY=auto or sysfs), or use the torch backend, "
            f"e.g. jupyter_tt.serve(backend='torch')"
        )
    if len(current.card_types) != 1:
        raise LeaseError(f"lease {current.id} mixes card types {current.card_types}: ttnn opens one mesh of like chips")
    return current


def check_ttnn_backend() -> KernelLease:
    """The lease, if this process may run ttnn on it: ``check_device_lease``, then TTError where ttnn or
    the SFPI compiler it builds kernels with is not installed. Cheap (nothing is imported or opened):
    call it before loading a model."""
    current = check_device_lease()
    if importlib.util.find_spec("ttnn") is None:
        raise TTError(
            "ttnn is not installed in this kernel's environment. Install it there: pip install ttnn (wheels exist "
            "for CPython 3.10 and 3.12), or use the torch backend"
        )
    sfpi = installed_ttnn_sfpi(system_root=TTSettings().sysfs_root)
    if sfpi is not None and sfpi.error:  # ttnn would fail at its first kernel build, deep inside open_mesh_device
        raise TTError(sfpi.error)
    return current


def open_mesh_device(**kwargs):
    """Open this kernel's leased devices with ttnn as one mesh, as tt_transformers and vLLM open them:
    one row of all the chips (n150 1×1, n300 1×2, a LoudBox 1×8), with 1-D fabric set first when there
    is more than one chip (``jupyter_tt.lease().meshes`` shows it).

    Keyword arguments go to ``ttnn.open_mesh_device`` (e.g. ``trace_region_size``). The mesh is closed
    by ``close_mesh_device`` or when the kernel exits; either disables the fabric again. Raises
    LeaseError on a simulated or ended lease and TTError without ttnn.
    """
    return open_lease_mesh(Runner.NOTEBOOK, **kwargs)


def open_lease_mesh(runner: Runner, **options):
    """The lease's mesh as ``runner`` opens it (``mesh.open_mesh``), closed at exit if nobody closes it."""
    current = check_ttnn_backend()
    try:
        import ttnn
    except ImportError as e:
        raise TTError(f"ttnn is installed but does not import ({e}): reinstall it, or use the torch backend") from e
    # ttnn enumerates what TT_VISIBLE_DEVICES shows: it must be exactly this lease's devices.
    os.environ["TT_VISIBLE_DEVICES"] = ",".join(current.bdfs)
    plan = current.meshes[runner]
    mesh = open_mesh(ttnn, plan, **options)
    _open_meshes.append((mesh, plan))
    return mesh


def close_mesh_device(mesh) -> None:
    """Close a mesh from ``open_mesh_device`` and disable its fabric (safe to call twice)."""
    for entry in list(_open_meshes):
        if entry[0] is mesh:
            _open_meshes.remove(entry)
            import ttnn

            close_mesh(ttnn, mesh, entry[1])


@atexit.register
def _close_all() -> None:
    for mesh, _plan in list(_open_meshes):
        close_mesh_device(mesh)
