{#- The HA failover drill: stop the leader's KCM (kcm_orch:count > 1: and followers),
    time how long until another master leads, start them again, report:

      salt-run state.orchestrate orch.kcm.drill
      salt-run state.orchestrate orch.kcm.drill pillar='{"kcm_orch": {"count": 2, "min_remaining": 1}}'

    Refuses when fewer than kcm_orch:min_remaining (default 2) healthy masters would stay
    running. Parameters in settings.jinja. #}
{%- from tpldir ~ "/settings.jinja" import orch with context %}

kcm-orch-drill-sync:
  salt.function:
    - name: saltutil.sync_all
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type }}

kcm-orch-drill:
  salt.runner:
    - name: kcm_orch.drill
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type }}
    - count: {{ orch.count }}
    - min_remaining: {{ orch.min_remaining }}
    - timeout: {{ orch.timeout }}
    - interval: {{ orch.interval or 0.5 }}
    - require:
      - salt: kcm-orch-drill-sync
