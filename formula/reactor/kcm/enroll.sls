{#- Opt-in (kcm:master:enroll:enabled): a minion that starts is handed to the kcm_enroll
    runner, which highstates it once if it has the control-plane grain. #}
{%- if tag.startswith("salt/minion/") and tag.endswith("/start") %}
kcm-enroll-highstate-once:
  runner.kcm_enroll.highstate_once:
    - args:
      - minion_id: {{ data["id"] | json }}
{%- endif %}
