{#- Opt-in (kcm:master:enroll:enabled): a minion that starts is handed to the kcm_enroll
    runner, which highstates it once if its id is one of the KCM masters (kcm_alert:masters);
    the event itself proves nothing (a batched event can carry any tag and data). #}
{%- if tag.startswith("salt/minion/") and tag.endswith("/start") %}
kcm-enroll-highstate-once:
  runner.kcm_enroll.on_start:
    - args:
      - tag: {{ tag | tojson }}
      - sender: {{ data.get("id") | tojson }}
{%- endif %}
