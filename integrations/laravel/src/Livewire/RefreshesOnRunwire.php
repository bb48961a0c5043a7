<?php

namespace Runwire\Laravel\Livewire;

use Runwire\Laravel\Channel;

/**
 * For a Livewire component that used to `wire:poll` a run or a review pack: it re-renders
 * (`$refresh`) when runwire pushes a change instead, and is as quiet as the polling it
 * replaces.
 *
 *     use RefreshesOnRunwire;
 *
 *     protected function refreshOnRunwire(): array
 *     {
 *         return [Channel::run($this->run)];
 *     }
 *
 * Each active item becomes one Echo listener (`echo-private:runs.42,.refresh.{component id}`
 * → `runwireRefresh`), through runwire's Echo connector (`RunwireConnector`), whose quiet
 * `.refresh` events do the rest in the browser: at most one refresh per component per 250 ms
 * however many of its items change, none while the tab is hidden or while a Filament action
 * (a modal) is mounted on the component — then exactly one when the tab is visible again or
 * the action is closed. Finished items get no listener, as the poll stopped when they were
 * done.
 *
 * Livewire registers a component's listeners when it mounts. When an action starts something
 * new (a review pack the user requested), call `runwireFollow(Channel::reviewPack(…))`.
 *
 * A component with listeners of its own keeps them (`$listeners`); one that defines
 * `getListeners()` itself merges `runwireListeners()` into it.
 */
trait RefreshesOnRunwire
{
    /**
     * What this component shows that runwire streams: `Channel::run($run)`,
     * `Channel::reviewPack($tenant, $latestPack)`, `Channel::workspaceRuns($workspace)`.
     *
     * @return Channel[]
     */
    abstract protected function refreshOnRunwire(): array;

    /**
     * The channels listened to, fixed when the component mounted: Livewire registers the
     * listeners then and checks every later event against `getListeners()`, so a run that has
     * finished since must still be on the list (its last change is what refreshes the page).
     *
     * @var string[]|null
     */
    public ?array $runwireListening = null;

    protected function getListeners()
    {
        $own = property_exists($this, 'listeners') ? (array) $this->listeners : [];

        return array_merge($own, $this->runwireListeners());
    }

    /** The Echo listeners: one quiet refresh per item active at mount, all in this component's group. */
    public function runwireListeners(): array
    {
        if ($this->runwireListening === null) {
            $active = array_filter($this->refreshOnRunwire(), fn (Channel $channel) => $channel->active);
            $this->runwireListening = array_values(array_map(fn (Channel $channel) => $channel->name, $active));
        }
        $listeners = [];
        foreach ($this->runwireListening as $name) {
            $listeners['echo-private:'.$name.',.refresh.'.$this->runwireGroup()] = 'runwireRefresh';
        }

        return $listeners;
    }

    /**
     * runwire pushed a change: re-render, like `$refresh`. The browser already waits while a
     * Filament action is mounted; a refresh that raced the mount renders nothing now (the
     * action's own requests re-render the component when it closes).
     */
    public function runwireRefresh(): void
    {
        if ($this->runwireActionMounted() && method_exists($this, 'skipRender')) {
            $this->skipRender();
        }
    }

    /** Follows items this component did not know when it mounted (e.g. a newly requested pack). */
    public function runwireFollow(Channel ...$channels): void
    {
        $params = [
            'group' => $this->runwireGroup(),
            'channels' => array_map(fn (Channel $channel) => $channel->name, $channels),
        ];
        if (method_exists($this, 'dispatchBrowserEvent')) {
            $this->dispatchBrowserEvent('runwire-follow', $params); // Livewire 2
        } else {
            $this->dispatch('runwire-follow', ...$params); // Livewire 3: named parameters
        }
    }

    /** The quiet-refresh group: the component's id, which the browser also finds it by. */
    protected function runwireGroup(): string
    {
        return (string) (method_exists($this, 'getId') ? $this->getId() : $this->id);
    }

    /** Whether a Filament action (a modal) is mounted: the moment its polling paused. */
    protected function runwireActionMounted(): bool
    {
        foreach (['mountedActions', 'mountedTableActions', 'mountedTableBulkAction', 'mountedFormComponentActions', 'mountedInfolistActions'] as $property) {
            if (property_exists($this, $property) && ! empty($this->{$property})) {
                return true;
            }
        }

        return false;
    }
}
