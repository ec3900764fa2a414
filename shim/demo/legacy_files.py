"""The stand-in's file actions, each keeping ``ajxp_index`` current as Pydio's meta.syncable does.

Every write goes to the disk and then to ``ajxp_index`` the way Pydio 8.2.5
updates it, so that the database triggers fill ``ajxp_changes`` with the rows a
real install would get.  Mixed into :class:`shim.demo.standin.LegacyStandin`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import typing
from datetime import UTC, datetime
from urllib.parse import unquote

import sqlalchemy as sa
from werkzeug.formparser import parse_form_data
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from .. import db
from .legacy_admin import storage_listing

XML = "text/xml; charset=UTF-8"


def xml_text(text: str) -> str:
    """*text* escaped for an XML text node or attribute."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FileActions:
    """``mkdir``, ``mkfile``, ``upload``, ``rename``, ``move``, ``delete``, ``ls``, ``stat``, ``download``."""

    # Provided by LegacyStandin.
    engine: sa.Engine
    store: typing.Any
    root_dir: typing.Callable[..., str]
    _ok: typing.Callable[[str], Response]

    # --- file actions, each keeping ajxp_index current ---------------------------

    def _local(self, ws, login, path) -> str:
        clean = "/" + "/".join(p for p in path.split("/") if p not in ("", ".", ".."))
        return self.root_dir(ws, login) + clean

    def _index_insert(self, ws, login, path, local):
        st = os.stat(local)
        is_dir = os.path.isdir(local)
        md5 = "directory" if is_dir else _md5_file(local)
        with self.engine.begin() as conn:
            conn.execute(
                db.index.insert().values(
                    node_path=path,
                    bytesize=0 if is_dir else st.st_size,
                    md5=md5,
                    mtime=int(st.st_mtime),
                    repository_identifier=self.store.identifier(ws, login),
                )
            )

    def _index_content(self, ws, login, path, local):
        st = os.stat(local)
        with self.engine.begin() as conn:
            done = conn.execute(
                db.index.update()
                .where(
                    db.index.c.node_path == path, db.index.c.repository_identifier == self.store.identifier(ws, login)
                )
                .values(bytesize=st.st_size, mtime=int(st.st_mtime), md5=_md5_file(local))
            ).rowcount
        if not done:
            self._index_insert(ws, login, path, local)

    def _index_move(self, ws, login, old, new):
        ident = self.store.identifier(ws, login)
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(db.index.c.node_id, db.index.c.node_path).where(
                    db.index.c.repository_identifier == ident,
                    sa.or_(
                        db.index.c.node_path == old,
                        db.index.c.node_path.startswith(old.rstrip("/") + "/", autoescape=True),
                    ),
                )
            ).all()
            for node_id, node_path in sorted(rows):
                conn.execute(
                    db.index.update().where(db.index.c.node_id == node_id).values(node_path=new + node_path[len(old) :])
                )

    def _index_delete(self, ws, login, path):
        ident = self.store.identifier(ws, login)
        with self.engine.begin() as conn:
            conn.execute(
                db.index.delete().where(
                    db.index.c.repository_identifier == ident,
                    sa.or_(
                        db.index.c.node_path == path,
                        db.index.c.node_path.startswith(path.rstrip("/") + "/", autoescape=True),
                    ),
                )
            )

    def rescan(self, ws, login) -> None:
        """Index what is on disk and forget what is gone (an indexation, a storage resync)."""
        root = self.root_dir(ws, login)
        ident = self.store.identifier(ws, login)
        with self.engine.connect() as conn:
            indexed = set(
                conn.execute(sa.select(db.index.c.node_path).where(db.index.c.repository_identifier == ident)).scalars()
            )
        on_disk = storage_listing(root)
        for path in sorted(on_disk):
            if path not in indexed:
                self._index_insert(ws, login, path, root + path)
        for path in sorted(indexed - set(on_disk)):
            if path != "/":
                self._index_delete(ws, login, path)

    def do_mkdir(self, request, ws, login, path, params):
        local = self._local(ws, login, path)
        os.makedirs(local, exist_ok=False)
        self._index_insert(ws, login, path, local)
        return self._ok("Created folder")

    def do_mkfile(self, request, ws, login, path, params):
        local = self._local(ws, login, path)
        with open(local, "xb") as fh:
            fh.write(params.get("content", "").encode())
        self._index_insert(ws, login, path, local)
        return self._ok("Created file")

    def do_upload(self, request, ws, login, path, params):
        # upload/put/{dir}: multipart field userfile_0, streamed to disk by Werkzeug.
        directory = path[len("/put") :] if path.startswith("/put") else path
        stream, form, files = parse_form_data(request.environ)
        upload = files.get("userfile_0")
        if upload is None:
            return Response("no file", 400)
        name = unquote(form.get("urlencoded_filename") or "") or upload.filename
        target = directory.rstrip("/") + "/" + name
        local = self._local(ws, login, target)
        existed = os.path.exists(local)
        upload.save(local)
        if existed:
            self._index_content(ws, login, target, local)
        else:
            self._index_insert(ws, login, target, local)
        return self._ok("Uploaded")

    def do_rename(self, request, ws, login, path, params):
        """``file`` renamed to ``dest`` (its new full path, as the desktop client sends it) or ``filename_new``."""
        source = params.get("file") or path
        dest = params.get("dest")
        target = dest if dest else source.rsplit("/", 1)[0] + "/" + params.get("filename_new", "")
        return self._move(ws, login, source, target)

    def do_move(self, request, ws, login, path, params):
        """``file`` moved into the folder ``dest``."""
        source = params.get("file") or path
        return self._move(ws, login, source, params.get("dest", "").rstrip("/") + "/" + source.rsplit("/", 1)[1])

    def _move(self, ws, login, source, target):
        os.makedirs(os.path.dirname(self._local(ws, login, target)), exist_ok=True)
        os.rename(self._local(ws, login, source), self._local(ws, login, target))
        self._index_move(ws, login, source, target)
        return self._ok("Renamed")

    def do_delete(self, request, ws, login, path, params):
        target = params.get("file") or path
        if not target or target == "/":
            return Response("nothing to delete", 400)
        recycle = "/" + ws.recycle_bin if ws.recycle_bin else None
        if recycle and not target.startswith(recycle + "/"):
            if not os.path.isdir(self._local(ws, login, recycle)):
                os.makedirs(self._local(ws, login, recycle))
                self._index_insert(ws, login, recycle, self._local(ws, login, recycle))
            return self._move(ws, login, target, recycle + "/" + target.rsplit("/", 1)[1])
        local = self._local(ws, login, target)
        shutil.rmtree(local) if os.path.isdir(local) else os.remove(local)
        self._index_delete(ws, login, target)
        return self._ok("Deleted")

    def do_ls(self, request, ws, login, path, params):
        local = self._local(ws, login, path or "/")
        items = []
        for name in sorted(os.listdir(local)):
            st = os.stat(os.path.join(local, name))
            child = path.rstrip("/") + "/" + name
            is_file = "false" if os.path.isdir(os.path.join(local, name)) else "true"
            items.append(
                f'<tree filename="{xml_text(child)}" text="{xml_text(name)}" is_file="{is_file}" '
                f'bytesize="{st.st_size}" ajxp_modiftime="{int(st.st_mtime)}"/>'
            )
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><tree filename="{xml_text(path or "/")}">'
            + "".join(items)
            + "</tree>"
        )
        return Response(body, 200, content_type=XML)

    def do_stat(self, request, ws, login, path, params):
        local = self._local(ws, login, path or "/")
        if not os.path.exists(local):
            return Response("{}", 200, content_type="application/json")
        st = os.stat(local)
        return Response(
            json.dumps({"size": st.st_size, "mtime": int(st.st_mtime), "mode": st.st_mode}),
            200,
            content_type="application/json",
        )

    def do_download(self, request, ws, login, path, params):
        local = self._local(ws, login, params.get("file") or path)
        if not os.path.isfile(local):
            return Response("", 404)
        st = os.stat(local)
        response = Response(
            wrap_file(request.environ, open(local, "rb")),
            200,
            content_type="application/force-download",
            direct_passthrough=True,
        )
        response.content_length = st.st_size
        response.last_modified = datetime.fromtimestamp(int(st.st_mtime), UTC)
        response.set_etag(f"{st.st_ino:x}-{st.st_size:x}-{int(st.st_mtime):x}")
        response.headers["Content-Disposition"] = f'attachment; filename="{os.path.basename(local)}"'
        response.headers["Accept-Ranges"] = "bytes"
        return response.make_conditional(request, accept_ranges=True, complete_length=st.st_size)
