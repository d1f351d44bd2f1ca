//! [`Core::tick`]: the rules, one small function each, applied in order.

use std::sync::Arc;
use std::time::Instant;

use super::{Action, Core, Member, MemberState, Reason, RolloutState, Sample};

impl Core {
    /// Looks at every member at `now` (with `sample` giving the load of those
    /// in the snapshot, and `queued` requests waiting in lb's queue) and
    /// returns what to do. Called every few hundred milliseconds.
    pub fn tick(
        &mut self,
        now: Instant,
        sample: impl Fn(&str) -> Option<Sample>,
        queued: u64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.apply_samples(now, sample);
        self.time_out_starts(now, &mut out);
        self.retire_unhealthy();
        self.plan_one_replacement(now);
        self.retire_surplus(&mut out);
        self.shrink_idle(now);
        self.drain_retiring(now, &mut out);
        self.stop_drained(now, &mut out);
        self.grow_on_load(now, queued);
        self.start_missing(now, &mut out);
        self.finish_rollout();
        out
    }

    fn apply_samples(&mut self, now: Instant, sample: impl Fn(&str) -> Option<Sample>) {
        for m in &mut self.members {
            if !matches!(m.state, MemberState::Ready | MemberState::Draining) {
                continue;
            }
            let Some(s) = sample(&m.name) else { continue };
            if s.in_flight > 0 || s.requests_total != m.sample.requests_total {
                m.last_used = now;
            }
            m.sample = s;
        }
    }

    fn time_out_starts(&mut self, now: Instant, out: &mut Vec<Action>) {
        let limit = self.cfg.start_timeout;
        let late: Vec<Arc<str>> = self
            .members
            .iter()
            .filter(|m| m.state == MemberState::Starting && now - m.started >= limit)
            .map(|m| m.name.clone())
            .collect();
        for name in late {
            let why = format!("not healthy within pool.start_timeout ({limit:?})");
            out.extend(self.start_failed(&name, &why, now));
        }
    }

    fn retire_unhealthy(&mut self) {
        for m in &mut self.members {
            if m.state == MemberState::Ready && m.retiring.is_none() && !m.sample.healthy {
                tracing::warn!(member = %m.name, "pool: member unhealthy; replacing it");
                m.retiring = Some(Reason::Unhealthy);
                self.counters.recycles[Reason::Unhealthy as usize] += 1;
            }
        }
    }

    /// At full strength and with no planned replacement under way, retires the
    /// first member over `max_memory`, else the oldest past `max_age`, else
    /// one still on the old generation of a running rollout.
    fn plan_one_replacement(&mut self, now: Instant) {
        let planned =
            |r: Option<Reason>| matches!(r, Some(Reason::Age | Reason::Memory | Reason::Rollout));
        let under_way = self
            .members
            .iter()
            .any(|m| m.state == MemberState::Ready && planned(m.retiring));
        if under_way || self.ready_keepers() < self.target as usize {
            return;
        }
        let (max_mem, max_age) = (self.cfg.max_memory, self.cfg.max_age);
        let rolling = self
            .rollout
            .as_ref()
            .filter(|r| r.state == RolloutState::Running)
            .map(|r| r.generation);
        let pick = |m: &Member| -> Option<Reason> {
            if max_mem.is_some_and(|max| m.memory.is_some_and(|b| b > max)) {
                Some(Reason::Memory)
            } else if max_age.is_some_and(|max| now - m.started >= max) {
                Some(Reason::Age)
            } else if rolling.is_some_and(|g| m.generation != g) {
                Some(Reason::Rollout)
            } else {
                None
            }
        };
        // Memory first, then age (oldest first: members are in start order),
        // then rollout.
        let chosen = [Reason::Memory, Reason::Age, Reason::Rollout]
            .into_iter()
            .find_map(|want| {
                self.members
                    .iter()
                    .position(|m| m.ready_keeper() && pick(m) == Some(want))
                    .map(|i| (i, want))
            });
        let Some((i, reason)) = chosen else { return };
        let m = &mut self.members[i];
        m.retiring = Some(reason);
        if reason != Reason::Rollout {
            self.counters.recycles[reason as usize] += 1;
        }
        tracing::info!(member = %m.name, reason = reason.as_str(), memory_bytes = m.memory,
            age_s = (now - m.started).as_secs(), "pool: recycling member; starting its replacement");
    }

    /// More keepers than the target (after a smaller `PUT size`): starting
    /// ones go first, then the least busy ready ones.
    fn retire_surplus(&mut self, out: &mut Vec<Action>) {
        let keepers = self.members.iter().filter(|m| m.keeper()).count();
        let mut surplus = keepers.saturating_sub(self.target as usize);
        while surplus > 0 {
            if let Some(m) = self
                .members
                .iter_mut()
                .rev()
                .find(|m| m.retiring.is_none() && m.state == MemberState::Starting)
            {
                m.state = MemberState::Stopping;
                tracing::info!(member = %m.name, "pool: surplus member stopped before ready");
                out.push(Action::Stop {
                    name: m.name.clone(),
                });
            } else if let Some(m) = self
                .members
                .iter_mut()
                .filter(|m| m.keeper())
                .min_by_key(|m| (m.sample.in_flight, m.last_used))
            {
                m.retiring = Some(Reason::ScaleDown);
            }
            surplus -= 1;
        }
    }

    /// Ready keepers above `min_size` unused for `idle_timeout` leave.
    fn shrink_idle(&mut self, now: Instant) {
        let idle_for = self.cfg.idle_timeout;
        let min = self.cfg.min_size;
        for m in &mut self.members {
            if self.target <= min {
                return;
            }
            if m.ready_keeper() && m.sample.in_flight <= 0 && now - m.last_used >= idle_for {
                m.retiring = Some(Reason::ScaleDown);
                self.target -= 1;
                self.counters.scaled_down += 1;
                tracing::info!(member = %m.name, idle_s = (now - m.last_used).as_secs(),
                    size = self.target, "pool: scaled down");
            }
        }
    }

    fn drain_retiring(&mut self, now: Instant, out: &mut Vec<Action>) {
        let full = self.ready_keepers() >= self.target as usize;
        for m in &mut self.members {
            let Some(reason) = m.retiring.filter(|_| m.state == MemberState::Ready) else {
                continue;
            };
            // Planned replacements wait for theirs to be ready; unhealthy and
            // surplus members take no traffic worth keeping.
            let now_ok = matches!(
                reason,
                Reason::Unhealthy | Reason::ScaleDown | Reason::Exited
            );
            if !(now_ok || full) {
                continue;
            }
            m.state = MemberState::Draining;
            m.draining_since = Some(now);
            tracing::info!(member = %m.name, reason = reason.as_str(), in_flight = m.sample.in_flight,
                "pool: member draining");
            if reason == Reason::Rollout {
                if let Some(r) = self.rollout.as_mut() {
                    r.done = (r.done + 1).min(r.total);
                }
            }
            out.push(Action::Drain {
                name: m.name.clone(),
            });
        }
    }

    fn stop_drained(&mut self, now: Instant, out: &mut Vec<Action>) {
        let limit = self.cfg.drain_timeout;
        for m in &mut self.members {
            let Some(since) = m
                .draining_since
                .filter(|_| m.state == MemberState::Draining)
            else {
                continue;
            };
            // The sample must postdate the drain (this tick's predates it).
            let empty = since < now && m.sample.in_flight <= 0;
            if empty || now - since >= limit {
                m.state = MemberState::Stopping;
                tracing::info!(member = %m.name, in_flight = m.sample.in_flight,
                    drained_ms = (now - since).as_millis() as u64, "pool: member stopping");
                out.push(Action::Stop {
                    name: m.name.clone(),
                });
            }
        }
    }

    /// Every ready keeper at `max_in_flight` (or requests queued), with none
    /// starting, for `scale_up_after`: one more member.
    fn grow_on_load(&mut self, now: Instant, queued: u64) {
        let cap = i64::from(self.cfg.max_in_flight);
        let ready: Vec<&Member> = self.members.iter().filter(|m| m.ready_keeper()).collect();
        let starting = self
            .members
            .iter()
            .any(|m| m.state == MemberState::Starting);
        let saturated = !ready.is_empty()
            && !starting
            && (queued > 0 || (cap > 0 && ready.iter().all(|m| m.sample.in_flight >= cap)));
        if !saturated || self.target >= self.cfg.max_size {
            self.busy_since = None;
            return;
        }
        let since = *self.busy_since.get_or_insert(now);
        if now - since >= self.cfg.scale_up_after {
            self.busy_since = None;
            self.target += 1;
            self.counters.scaled_up += 1;
            tracing::info!(
                size = self.target,
                busy_ms = (now - since).as_millis() as u64,
                queued,
                "pool: scaled up"
            );
        }
    }

    fn start_missing(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.no_start_before.is_some_and(|t| now < t) {
            return;
        }
        let live = |c: &Core| {
            c.members
                .iter()
                .filter(|m| m.state != MemberState::Stopping)
                .count()
        };
        while self.members.iter().filter(|m| m.keeper()).count() < self.target as usize
            && live(self) < 2 * self.cfg.max_size as usize
        {
            let name: Arc<str> = format!("{}-{}", self.cfg.name, self.next_number).into();
            self.next_number += 1;
            tracing::info!(member = %name, generation = self.generation, "pool: member starting");
            self.members
                .push(Member::starting(name.clone(), self.generation, now));
            out.push(Action::Start {
                name,
                generation: self.generation,
            });
        }
    }

    fn finish_rollout(&mut self) {
        let Some(r) = self.rollout.as_mut() else {
            return;
        };
        if r.state != RolloutState::Running {
            return;
        }
        let settled = self.members.iter().all(|m| match m.state {
            MemberState::Starting => false,
            MemberState::Ready => m.generation == r.generation || m.retiring.is_some(),
            MemberState::Draining | MemberState::Stopping => true,
        });
        let old_ready = self
            .members
            .iter()
            .any(|m| m.state == MemberState::Ready && m.generation != r.generation);
        if settled && !old_ready {
            r.state = RolloutState::Done;
            r.done = r.total;
            tracing::info!(
                generation = r.generation,
                total = r.total,
                "pool: rollout done"
            );
        }
    }
}
