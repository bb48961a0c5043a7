<?php

namespace Runwire\Laravel;

/**
 * One thing runwire streams, by its Echo channel name: a run (`runs.{id}`), a tenant's review
 * pack (`tenants.{id}.review-pack`) or a workspace's operations feed (`workspaces.{id}.runs`),
 * and whether it is active now — a finished run or pack changes no more, so nothing listens
 * to it (as `wire:poll` stopped once it was done).
 */
final class Channel
{
    public function __construct(public readonly string $name, public readonly bool $active)
    {
    }

    /** A run (a model, a row with `id` and `status`, or an id: then taken as active). */
    public static function run(mixed $run): self
    {
        $status = is_object($run) ? ($run->status ?? null) : null;

        return new self('runs.'.self::key($run), ! is_object($run) || Runwire::runIsActive($status));
    }

    /**
     * A tenant's review-pack card; active while `$latestPack` (the tenant's latest pack, if
     * the page shows one) is queued or generating. Without a pack there is nothing to follow
     * until one is requested (see `RefreshesOnRunwire::runwireFollow`).
     */
    public static function reviewPack(mixed $tenant, mixed $latestPack = null): self
    {
        $status = is_object($latestPack) ? ($latestPack->status ?? null) : null;

        return new self('tenants.'.self::key($tenant).'.review-pack', Runwire::packIsActive($status));
    }

    /** A workspace's operations feed: every run change and review-pack card; always live. */
    public static function workspaceRuns(mixed $workspace): self
    {
        return new self('workspaces.'.self::key($workspace).'.runs', true);
    }

    private static function key(mixed $item): string
    {
        if (is_object($item)) {
            $item = method_exists($item, 'getKey') ? $item->getKey() : ($item->id ?? null);
        }
        if (! is_numeric($item) || (int) $item < 1) {
            throw new \InvalidArgumentException('runwire channels take positive ids, got '.var_export($item, true));
        }

        return (string) (int) $item;
    }
}
