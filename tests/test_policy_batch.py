"""A page of images is checked against get_image in one batch (``PolicyEnforcer.allows_each``):
one evaluation per distinct value of the target keys the rule reads, with the same answers as
checking each image alone, whatever the rule in force reads (the defaults, a property, a dotted
key or a rule it cannot see through, which are evaluated image by image)."""

from __future__ import annotations

import itertools
from pathlib import Path

from conftest import ADMIN, MEMBER_A, MEMBER_B, PROJECT_A, PROJECT_B, make_config, start_api
from streamd.catalog.records import ImageRecord, utcnow
from streamd.context import RequestContext
from streamd.policy import PolicyEnforcer, PolicySettings, image_target


def _image(n: int, owner: str, visibility: str, distro: str) -> ImageRecord:
    now = utcnow()
    return ImageRecord(id=f"00000000-0000-0000-0000-{n:012d}", name=f"i{n}", status="active",
                       visibility=visibility, protected=False, os_hidden=False, disk_format="raw",
                       container_format="bare", size=1, virtual_size=None, checksum=None, os_hash_algo=None,
                       os_hash_value=None, min_disk=0, min_ram=0, owner=owner, created_at=now, updated_at=now,
                       properties={"os_distro": distro, "nested": "x"}, tags=("t",))


IMAGES = [_image(n, owner, vis, distro) for n, (owner, vis, distro) in enumerate(itertools.product(
    (PROJECT_A, PROJECT_B, "c" * 32, None), ("public", "private", "shared", "community"), ("ubuntu", "debian")))]
CONTEXTS = [RequestContext(project_id=PROJECT_A, user_id="a", roles=frozenset({"reader", "member"})),
            RequestContext(project_id=PROJECT_B, user_id="b", roles=frozenset({"reader"})),
            RequestContext(project_id=None, user_id="n", roles=frozenset({"reader"})),
            RequestContext(project_id="f" * 32, user_id="admin", roles=frozenset({"admin", "reader"}))]


def _enforcer(tmp_path: Path, rules: str | None) -> PolicyEnforcer:
    path = tmp_path / "policy.yaml"
    if rules is not None:
        path.write_text(rules)
    return PolicyEnforcer(PolicySettings(policy_file=path, policy_file_required=rules is not None))


def test_the_batch_answers_as_each_image_alone(tmp_path: Path) -> None:
    for n, (rules, keys) in enumerate([
            (None, ("member_id", "project_id", "visibility")),
            ('"get_image": "\'ubuntu\':%(os_distro)s or role:admin"\n', ("os_distro",)),
            ('"get_image": "rule:mine or \'public\':%(visibility)s"\n"mine": "project_id:%(owner)s"\n',
             ("owner", "visibility")),
            ('"get_image": "\'x\':%(extra_properties.nested)s"\n', None),   # a dotted key: image by image
            ('"get_image": "rule:undefined_here"\n', None)]):                 # the default rule decides
        work = tmp_path / str(n)
        work.mkdir()
        enforcer = _enforcer(work, rules)
        assert enforcer._target_keys("get_image") == keys, rules
        for ctx in CONTEXTS:
            targets = [image_target(ctx, i) for i in IMAGES]
            expected = [enforcer.allows(ctx, "get_image", t) for t in targets]
            assert enforcer.allows_each(ctx, "get_image", targets) == expected, (rules, ctx)
            if rules is not None and "os_distro" in rules and "admin" not in ctx.roles:
                assert expected.count(True) not in (0, len(expected))  # the rule does tell images apart


async def test_a_listing_is_filtered_by_a_rule_on_a_property(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text('"get_image": "\'ubuntu\':%(os_distro)s or role:admin"\n')
    config = make_config(tmp_path, None, oslo_policy={"policy_file": str(tmp_path / "policy.yaml")})
    server, client, session = await start_api(config)
    try:
        made = {}
        for n, distro in enumerate(("ubuntu", "debian", "ubuntu", "centos", "ubuntu")):
            image = await client.create(as_=ADMIN, name=f"i{n}", visibility="public", os_distro=distro)
            made[image["id"]] = distro
        for who in (MEMBER_A, MEMBER_B):
            listed = await client.list_ids(as_=who)
            assert sorted(listed) == sorted(i for i, d in made.items() if d == "ubuntu")
    finally:
        await session.close()
        await server.close()
