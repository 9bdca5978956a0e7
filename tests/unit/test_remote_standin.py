"""The Supabase stand-in's pure parts: PostgREST's SQLSTATE → HTTP status map and its JWTs."""

from __future__ import annotations

import pytest

from tests.standin import jwt
from tests.standin.postgrest import http_status

# PostgREST/postgrest at commit 4834678, src/library/PostgREST/Error.hs, mapSQLtoHTTP: each row
# is (SQLSTATE, message, anon role?, status, the line of Error.hs that says so).
ERROR_HS_TABLE = [
    ("08006", "", False, 503, 550),  # '0':'8' pg connection err
    ("09000", "", False, 500, 551),  # triggered action exception
    ("0L000", "", False, 403, 552),  # invalid grantor
    ("0P000", "", False, 403, 553),  # invalid role specification
    ("23503", "", False, 409, 554),  # foreign_key_violation
    ("23505", "", False, 409, 555),  # unique_violation
    ("25006", "", False, 405, 556),  # read_only_sql_transaction
    ("21000", "DELETE requires a WHERE clause", False, 400, 559),  # pg-safeupdate
    ("21000", "more than one row returned by a subquery", False, 500, 560),
    ("22023", 'role "nobody" does not exist', False, 401, 563),  # JWT role missing
    ("22023", "invalid value", False, 400, 564),
    ("25001", "", False, 500, 565),  # invalid tx state
    ("28000", "", False, 403, 566),  # invalid auth specification
    ("2D000", "", False, 500, 567),
    ("38000", "", False, 500, 568),
    ("39000", "", False, 500, 569),
    ("3B000", "", False, 500, 570),
    ("40001", "", False, 500, 571),  # serialization failure: tx rollback
    ("40P01", "", False, 500, 571),  # deadlock
    ("53400", "", False, 500, 572),  # config limit exceeded
    ("53300", "", False, 503, 573),  # too many connections: insufficient resources
    ("54000", "", False, 500, 574),
    ("55P03", "", False, 500, 575),  # lock not available
    ("57P01", "", False, 503, 576),  # admin shutdown
    ("57014", "canceling statement due to statement timeout", False, 500, 577),
    ("58000", "", False, 500, 578),
    ("F0000", "", False, 500, 579),
    ("HV000", "", False, 500, 580),
    ("P0001", "", False, 400, 581),  # default code for raise
    ("P0002", "", False, 500, 582),  # other PL/pgSQL errors
    ("XX000", "", False, 500, 583),
    ("42883", "function xmlagg(x) does not exist", False, 406, 585),
    ("42883", "function f() does not exist", False, 404, 586),
    ("42P01", "", False, 404, 587),
    ("42P17", "", False, 500, 588),
    ("42501", "", True, 401, 589),  # insufficient privilege, anon role
    ("42501", "", False, 403, 589),  # another role
    ("PT409", "", False, 409, 590),  # RAISE SQLSTATE 'PTxyz'
    ("ASL01", "", False, 400, 595),  # our own SQLSTATEs: anything else is 400
    ("23514", "", False, 400, 595),  # check_violation
    ("22P02", "", False, 400, 595),
]


@pytest.mark.parametrize(("code", "message", "anon", "status", "line"), ERROR_HS_TABLE)
def test_sqlstates_map_to_postgrests_statuses(
    code: str, message: str, anon: bool, status: int, line: int
) -> None:
    """Every SQLSTATE rule of PostgREST's mapSQLtoHTTP (Error.hs 545-597) is the stand-in's."""
    assert http_status(code, message, anon=anon) == status, f"Error.hs:{line}"


def test_jwts_round_trip_and_refuse_tampering_and_expiry() -> None:
    """A signed token verifies to its claims; another secret, an edited body, a token that
    expired more than PostgREST's 30 s skew ago, or garbage are refused with PostgREST's codes."""
    token = jwt.sign({"role": "authenticated", "sub": "u1", "exp": 2_000}, "s3cret")
    assert jwt.verify(token, "s3cret", now=1_000)["sub"] == "u1"
    assert jwt.verify(token, "s3cret", now=2_029)["role"] == "authenticated"  # within the skew
    with pytest.raises(jwt.JwtError) as expired:
        jwt.verify(token, "s3cret", now=2_031)
    assert (expired.value.code, expired.value.message) == ("PGRST303", "JWT expired")
    with pytest.raises(jwt.JwtError, match="cryptographic") as wrong:
        jwt.verify(token, "other", now=1_000)
    assert wrong.value.code == "PGRST301"
    header, _, mac = token.split(".")
    forged = ".".join([header, jwt.sign({"role": "service_role"}, "x").split(".")[1], mac])
    with pytest.raises(jwt.JwtError, match="cryptographic"):
        jwt.verify(forged, "s3cret", now=1_000)
    with pytest.raises(jwt.JwtError, match="Expected 3 parts"):
        jwt.verify("abc", "s3cret")
