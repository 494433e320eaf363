"""The price table's arithmetic, against values computed by hand from the table's own rates (each written out below),
for two regions (us-central1: every multiplier 1, Cloud Run tier 1; europe-west2: Cloud SQL compute × 1.288, storage
× 1.2, Cloud Run tier 2, Cloud Storage $0.023) and three tiers (the two shared-core ones and a custom one)."""

from __future__ import annotations

import pytest

from mlflow_gcp import pricing
from mlflow_gcp.config import REGIONS
from mlflow_gcp.pricing import Footprint, estimate

# Cloud SQL instance, 730 hours a month:
#   db-f1-micro       us-central1: 730 × $0.0105                              =   $7.665
#                     europe-west2: 730 × $0.0105 × 1.288 = 730 × $0.013524    =   $9.87252
#   db-g1-small       us-central1: 730 × $0.0350                              =  $25.55
#                     europe-west2: 730 × $0.0350 × 1.288 = 730 × $0.04508     =  $32.9084
#   db-custom-2-7680  (2 vCPU, 7680 MiB = 7.5 GB)
#                     us-central1: 730 × (2 × $0.0413 + 7.5 × $0.0070)
#                                = 730 × ($0.0826 + $0.0525) = 730 × $0.1351   =  $98.623
#                     europe-west2: 730 × $0.1351 × 1.288 = 730 × $0.1740088   = $127.026424
INSTANCE = {
    ("us-central1", "db-f1-micro"): 7.665,
    ("us-central1", "db-g1-small"): 25.55,
    ("us-central1", "db-custom-2-7680"): 98.623,
    ("europe-west2", "db-f1-micro"): 9.87252,
    ("europe-west2", "db-g1-small"): 32.9084,
    ("europe-west2", "db-custom-2-7680"): 127.026424,
}

# Everything else at the defaults (10 GB SSD, backups on, min_instances 0, 4 secret versions, docker builder):
#   SSD 10 GB:          us-central1 10 × $0.170 = $1.70;  europe-west2 10 × $0.170 × 1.2 = 10 × $0.204 = $2.04
#   backups (10 GB):    us-central1 10 × $0.080 = $0.80;  europe-west2 10 × $0.080 × 1.2 = 10 × $0.096 = $0.96
#   Cloud Run at zero:  $0
#   Artifact Registry:  (1 GB − 0.5 GB free) × $0.10 = $0.05
#   Secret Manager:     4 versions, 6 free: $0
#   Cloud Storage 1 GB: us-central1 $0.020; europe-west2 $0.023
REST = {"us-central1": 1.70 + 0.80 + 0.05 + 0.020, "europe-west2": 2.04 + 0.96 + 0.05 + 0.023}


@pytest.mark.parametrize(("region", "tier"), sorted(INSTANCE))
def test_each_tier_in_each_region_costs_what_the_table_says(region: str, tier: str):
    est = estimate(Footprint(region=region, tier=tier, bucket_location=region.upper()))
    (instance,) = [i for i in est.items if i.what.startswith(f"Cloud SQL {tier}")]
    assert instance.monthly_usd == pytest.approx(INSTANCE[region, tier])
    assert est.total == pytest.approx(INSTANCE[region, tier] + REST[region])


def test_the_default_stack_in_us_central1_and_europe_west2():
    # db-custom-1-3840 (1 vCPU, 3840 MiB = 3.75 GB):
    #   us-central1:  730 × (1 × $0.0413 + 3.75 × $0.0070) = 730 × $0.06755 = $49.3115
    #                 total $49.3115 + $2.57 = $51.8815
    #   europe-west2: 730 × $0.06755 × 1.288 = 730 × $0.0870044 = $63.513212
    #                 total $63.513212 + $3.073 = $66.586212
    us = estimate(Footprint(region="us-central1"))
    eu = estimate(Footprint(region="europe-west2", bucket_location="EUROPE-WEST2"))
    assert us.total == pytest.approx(51.8815)
    assert eu.total == pytest.approx(66.586212)
    assert [i.resource for i in us.items] == [
        "sql:instance", "sql:instance", "sql:instance", "run", "registry", "secrets", "bucket",
    ]  # fmt: skip
    assert us.as_dict()["monthly_usd"] == 51.88
    assert [i["monthly_usd"] for i in us.as_dict()["items"]] == [49.31, 1.7, 0.8, 0.0, 0.05, 0.0, 0.02]


def test_cloud_run_at_zero_and_at_min_instances():
    # At zero: nothing while idle. Each minimum instance (1 vCPU, 1 GiB) idles all month, 2,628,000 s (730 h):
    #   tier 1 (us-central1):  (1 × $0.0000025 + 1 × $0.0000025) × 2,628,000 = $13.14
    #   tier 2 (europe-west2): (1 × $0.0000035 + 1 × $0.0000035) × 2,628,000 = $18.396
    #   2 instances of 2 vCPU, 512 MiB in us-central1: 2 × (2 × $0.0000025 + 0.5 × $0.0000025) × 2,628,000 = $32.85
    assert pricing.run_service(0, 1, 1, "us-central1").monthly_usd == 0
    assert "would add $13.14" in pricing.run_service(0, 1, 1, "us-central1").what
    assert pricing.run_service(1, 1, 1, "us-central1").monthly_usd == pytest.approx(13.14)
    assert pricing.run_service(1, 1, 1, "europe-west2").monthly_usd == pytest.approx(18.396)
    two = estimate(Footprint(region="us-central1", min_instances=2, cpu=2, memory_gib=pricing.memory_gib("512Mi")))
    assert two.total == pytest.approx(51.8815 + 32.85)


def test_hdd_storage_secrets_beyond_the_free_tier_and_builds():
    # HDD 20 GB in europe-west2: 20 × $0.090 × 1.2 = 20 × $0.108 = $2.16; backups 20 × $0.096 = $1.92
    # 8 secret versions: (8 − 6 free) × $0.06 = $0.12
    # Cloud Build: 4 builds × 5 min = 20 minutes, under the 2,500 free: $0; 600 builds × 5 = 3,000 min:
    #   (3,000 − 2,500) × $0.006 = $3.00
    eu = Footprint(region="europe-west2", disk_gb=20, disk_type="PD_HDD", secret_versions=8, builder="cloudbuild")
    items = {i.what.split(":")[0]: i.monthly_usd for i in estimate(eu).items}
    assert items["Cloud SQL HDD storage"] == pytest.approx(2.16)
    assert items["Cloud SQL backups"] == pytest.approx(1.92)
    assert items["Secret Manager"] == pytest.approx(0.12)
    assert items["Cloud Build"] == 0
    assert pricing.builds(600, 5).monthly_usd == pytest.approx(3.00)


def test_only_the_parts_included_are_priced_and_a_multi_region_bucket_costs_its_own_price():
    # A US multi-region bucket, 1 GB: $0.026; without the database nothing else but it.
    est = estimate(Footprint(region="us-central1", bucket_location="US", parts=frozenset({"bucket"})))
    assert [(i.resource, i.monthly_usd) for i in est.items] == [("bucket", 0.026)]
    assert estimate(Footprint(region="us-central1", parts=frozenset())).total == 0


def test_every_region_the_tool_accepts_has_prices_and_a_tier_it_cannot_price_is_said_not_guessed():
    assert set(pricing.REGIONS) == set(REGIONS)
    assert {pricing.run_tier(r) for r in REGIONS} == {1, 2}
    for tier in ("db-perf-optimized-N-2", "db-nonsense"):  # Enterprise Plus; no tier at all
        line = pricing.sql_instance(tier, "us-central1")
        assert (line.monthly_usd, line.what) == (0, f"Cloud SQL {tier}: no price known for this tier")
    # A legacy predefined tier is vCPUs plus memory: db-n1-standard-2 = 730 × (2 × $0.0413 + 7.5 × $0.0070) = $98.623
    assert pricing.sql_instance("db-n1-standard-2", "us-central1").monthly_usd == pytest.approx(98.623)


def test_memory_quantities():
    assert pricing.memory_gib("512Mi") == 0.5
    assert pricing.memory_gib("2Gi") == 2
    with pytest.raises(ValueError):
        pricing.memory_gib("2G")


def test_the_readme_shows_what_up_prints_for_each_configuration():
    from pathlib import Path

    from mlflow_gcp import config as cfg
    from mlflow_gcp.cost import footprint

    readme = Path(__file__).parents[2].joinpath("README.md").read_text()
    table = readme.split("<!-- estimates: tests/unit/test_pricing.py checks this table against the code -->\n")[1]
    rows = [line.strip("|").split("|") for line in table.split("\n\n")[0].splitlines()[2:]]
    flags = {
        "defaults": {},
        "--tier db-g1-small": {"database.tier": "db-g1-small"},
        "--tier db-f1-micro": {"database.tier": "db-f1-micro"},
        "server.min_instances = 1": {"server.min_instances": 1},
    }
    assert len(rows) == len(flags)
    for label, *cells in rows:
        (extra,) = [f for key, f in flags.items() if key in label]
        for region, cell in zip(("us-central1", "europe-west2"), cells, strict=True):
            config = cfg.load(None, flags={"project": "my-project", "region": region, **extra}, environ={})
            assert cell.strip() == f"${estimate(footprint(config, 'docker')).total:,.2f}", (label, region)
    # The sentences around it: the default in us-central1, its Cloud SQL instance, and db-f1-micro.
    assert "With the defaults `up` estimates $51.88 a month in\nus-central1, $49.31 of it" in readme
    assert "`--tier db-f1-micro`\nbrings it to $10.24" in readme
