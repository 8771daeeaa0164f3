"""Which destinations a study's results go to: the configured defaults plus "reply to the sender"."""

from __future__ import annotations

from sqlalchemy import Engine, select

from node.config import DeliveryConfig
from node.db.schema import Association, Instance, Series, Study


def destinations_for_study(engine: Engine, config: DeliveryConfig, study_instance_uid: str) -> list[str]:
    """``default_destinations``, then the ``reply_to`` destination of each calling AE that sent the study."""
    senders = (select(Association.calling_ae).distinct()
               .join(Instance, Instance.association_id == Association.id)
               .join(Series, Instance.series_id == Series.id)
               .join(Study, Series.study_id == Study.id)
               .where(Study.study_instance_uid == study_instance_uid))
    with engine.connect() as conn:
        calling_aes = sorted(conn.execute(senders).scalars())
    replies = [config.reply_to[ae] for ae in calling_aes if ae in config.reply_to]
    return list(dict.fromkeys([*config.default_destinations, *replies]))
