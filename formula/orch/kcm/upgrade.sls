{#- Leader-aware rolling change of the KCM masters (a new version, or a config change
    that needs a restart):

      salt-run state.orchestrate orch.kcm.upgrade pillar='{"kcm": {"version": "v1.37.3"} }'
      salt-run state.orchestrate orch.kcm.upgrade            # after changing the pillar

    preflight on every master -> followers one at a time -> the leader last -> a live
    leader on every master's view. The steps are the kcm_orch runner's (see its
    docstring); parameters in settings.jinja. #}
{%- from tpldir ~ "/settings.jinja" import orch, change with context %}

kcm-orch-upgrade-sync:
  salt.function:
    - name: saltutil.sync_all
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type | json }}

kcm-orch-upgrade-preflight:
  salt.runner:
    - name: kcm_orch.preflight
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type | json }}
    - timeout: {{ orch.apply_timeout | json }}
{%- if change %}
    - pillar: {{ {'kcm': change} | json }}
{%- endif %}
    - require:
      - salt: kcm-orch-upgrade-sync

kcm-orch-upgrade-rolling:
  salt.runner:
    - name: kcm_orch.upgrade
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type | json }}
    - preflight: false
    - timeout: {{ orch.timeout | json }}
    - interval: {{ orch.interval | json }}
    - apply_timeout: {{ orch.apply_timeout | json }}
{%- if change %}
    - pillar: {{ {'kcm': change} | json }}
{%- endif %}
    - require:
      - salt: kcm-orch-upgrade-preflight

kcm-orch-upgrade-leader-elected:
  salt.function:
    - name: state.single
    - tgt: {{ orch.tgt | json }}
    - tgt_type: {{ orch.tgt_type | json }}
    - arg:
      - kcm.leader_elected
    - kwarg:
        name: kube-controller-manager
        timeout: {{ orch.timeout | json }}
    - require:
      - salt: kcm-orch-upgrade-rolling
