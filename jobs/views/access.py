"""Who may see and do what: every page needs a login and a view permission, every action the operate one.

/metrics and the webhook are for machines: they check a bearer token instead (bearer_token,
token_matches).
"""
from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django_htmx.http import HttpResponseClientRedirect

VIEW_JOBS = "jobs.view_jobrecord"
VIEW_AUDIT = "jobs.view_auditentry"
OPERATE = "jobs.operate_jobs"

View = Callable[..., HttpResponse]


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_matches(token: str | None, expected: object) -> bool:
    """Whether the token sent is the one configured, compared in constant time."""
    # Over bytes: compare_digest refuses str that is not ASCII.
    return token is not None and hmac.compare_digest(token.encode(), str(expected).encode())


def can_operate(request: HttpRequest) -> bool:
    return request.user.is_authenticated and request.user.has_perm(OPERATE)


def requires(permission: str) -> Callable[[View], View]:
    """Anonymous: to the login page (an HTMX poll is sent there as a whole page); no permission: 403."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                login = redirect_to_login(request.get_full_path())
                if getattr(request, "htmx", False):
                    # A fragment request must not swap the login form into a table.
                    return HttpResponseClientRedirect(login.url)
                return login
            if not request.user.has_perm(permission):
                raise PermissionDenied(f"this needs the {permission} permission")
            return view(request, *args, **kwargs)

        return guarded

    return decorate


viewer_required = requires(VIEW_JOBS)
audit_viewer_required = requires(VIEW_AUDIT)
operator_required = requires(OPERATE)
