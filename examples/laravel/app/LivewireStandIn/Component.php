<?php

namespace App\LivewireStandIn;

/**
 * The part of `Livewire\Component` the example's components use: an id, public properties
 * that travel with the page, `render()`, `skipRender()`, `dispatch()` to the browser and
 * `getListeners()` (by default `$listeners`). With Livewire installed, the components in
 * app/Livewire extend `Livewire\Component` instead and nothing else changes.
 */
abstract class Component
{
    private string $id = '';

    private bool $skipRender = false;

    private array $dispatches = [];

    abstract public function render();

    public function getId(): string
    {
        return $this->id;
    }

    public function skipRender(): void
    {
        $this->skipRender = true;
    }

    /** Livewire 3: a browser event; named parameters become its `detail`. */
    public function dispatch(string $event, mixed ...$params): void
    {
        $this->dispatches[] = ['name' => $event, 'params' => $params];
    }

    protected function getListeners()
    {
        return property_exists($this, 'listeners') ? $this->listeners : [];
    }

    /** @internal for the Runtime */
    public function standIn(?string $id = null): array
    {
        if ($id !== null) {
            $this->id = $id;
        }
        $state = ['skipRender' => $this->skipRender, 'dispatches' => $this->dispatches];
        $this->skipRender = false;
        $this->dispatches = [];

        return $state;
    }
}
