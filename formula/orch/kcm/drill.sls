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
    - tgt_type: {{ orch.tgt_type | json }}

kcm-orch-drill:
  salt.runner:
    - name: kcm_orch.drill
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type | json }}
    - count: {{ orch.count | json }}
    - min_remaining: {{ orch.min_remaining | json }}
    - timeout: {{ orch.timeout | json }}
    - interval: {{ orch.drill_interval | json }}
    - require:
      - salt: kcm-orch-drill-sync
